"""An order message may not move an order, or an accession number, to another patient.

Before an order is created or updated, :func:`check_order` compares the patient the
message names with the patient of the order it updates (matched by placer number,
filler number, accession number + issuer, or FHIR resource id) and of any other order
holding its accession number. A different patient raises
:class:`~broker.model.identity.IdentityConflictError`: the message is refused and
nothing is changed. A message without a patient ID keeps the order's patient (HL7
updates), except a FHIR replace (PUT), which may not drop the patient of an order that
has one.

A new order (nothing matched) costs nothing here: only updates and FHIR puts read.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from broker.model.domain import Order, Patient
from broker.model.identity import (
    ConflictAction,
    ConflictKind,
    ConflictReason,
    ConflictReport,
    IdentityConflictError,
    patient_conflict,
)
from broker.store.tables import orders

#: How radbridge names each identifier an order is matched on.
_NAMES = {
    "placer_number": "placer number",
    "filler_number": "filler number",
    "accession_number": "accession number",
    "resource_id": "resource id",
}
_CORRECTION = (
    "valid: the order's own patient; a patient correction comes as an ADT merge (A40) "
    "or update (A08) first"
)


def _matched_on(order: Order, row: Any, resource_id: str | None) -> tuple[str, str]:
    """Which identifier tied the message to the stored order, and its value."""
    if resource_id is not None:
        return "resource_id", resource_id
    for key in ("placer_number", "filler_number"):
        value = getattr(order, key)
        if value and value == getattr(row, key):
            return key, value
    return "accession_number", order.accession_number or ""


def _refuse(
    order: Order,
    held: Patient,
    why: str,
    *,
    key: str,
    value: str,
    order_id: int,
    other_site: bool = False,
    held_site: str | None = None,
) -> IdentityConflictError:
    """The refusal of an order naming another patient than the order ``order_id`` (or,
    ``other_site``, sent for another site than that order's, ``held_site``)."""
    name = _NAMES[key]
    if other_site:
        detail = (
            f"this {name} is an order of site {held_site or '(the hub)'}, not of "
            f"{order.site or '(the hub)'}; nothing was changed; valid: the order's own "
            "site, or a new order"
        )
    else:
        detail = f"this {name} is another patient's order ({why}); nothing was changed; "
        detail += _CORRECTION
    return IdentityConflictError(
        ConflictReport(
            kind=ConflictKind.ORDER_SITE if other_site else ConflictKind.ORDER_PATIENT,
            action=ConflictAction.REFUSED,
            detail=detail,
            subject=f"{name} {value}",
            reason=ConflictReason.OTHER_SITE if other_site else ConflictReason.OTHER_PATIENT,
            matched_on=key,
            held=held,
            claimed=order.patient,
            order_id=order_id,
        )
    )


def check_order(
    conn: Connection, order: Order, existing: int | None, resource_id: str | None
) -> None:
    """Refuse ``order`` if it would move the order ``existing`` (or its accession number)
    to another patient; see the module."""
    claimed = order.patient
    effective = claimed
    accession_is_new = resource_id is not None
    if existing is not None:
        row = conn.execute(
            select(
                orders.c.patient_id,
                orders.c.issuer_of_patient_id,
                orders.c.placer_number,
                orders.c.filler_number,
                orders.c.accession_number,
                orders.c.issuer,
                orders.c.site,
            ).where(orders.c.id == existing)
        ).one()
        held = Patient(patient_id=row.patient_id, issuer=row.issuer_of_patient_id)
        key, value = _matched_on(order, row, resource_id)
        if row.site != order.site:  # only a FHIR id matches across sites
            raise _refuse(
                order,
                held,
                "",
                key=key,
                value=value,
                order_id=existing,
                other_site=True,
                held_site=row.site,
            )
        why = patient_conflict(held, claimed)
        if why is None and resource_id is not None and held.patient_id and not claimed.patient_id:
            why = "the new version names no patient ID"
        if why is not None:
            raise _refuse(order, held, why, key=key, value=value, order_id=existing)
        if not claimed.patient_id and resource_id is None:
            effective = held  # an HL7 update without a patient keeps the order's
        accession_is_new = (order.accession_number, order.issuer) != (
            row.accession_number,
            row.issuer,
        )
    if not (order.accession_number and effective.patient_id and accession_is_new):
        return
    others = conn.execute(
        select(orders.c.id, orders.c.patient_id, orders.c.issuer_of_patient_id).where(
            orders.c.accession_number == order.accession_number,
            orders.c.issuer.is_not_distinct_from(order.issuer),
            orders.c.site.is_not_distinct_from(order.site),
            orders.c.id != (existing if existing is not None else -1),
        )
    ).all()
    for other in others:
        held = Patient(patient_id=other.patient_id, issuer=other.issuer_of_patient_id)
        why = patient_conflict(held, effective)
        if why is not None:
            raise _refuse(
                order,
                held,
                why,
                key="accession_number",
                value=order.accession_number,
                order_id=other.id,
            )
