"""Patients from ADT: updates (A01/A04/A08) and merges (A40), checked and audited.

These are the only messages that change who a study or an order belongs to, so each
is checked before it is applied and audited when it is (``patient.update``,
``patient.merge``, in the same transaction):

- An update names its patient by ID and issuer; an ID without an issuer that radbridge
  holds for several issuers (sites) is ambiguous and refused.
- A merge moves the prior patient's studies and orders to the survivor. Refused: a
  prior patient radbridge does not know (no study, order or ADT names it), a prior
  patient that is the survivor, an ID without an issuer held for several issuers, and a
  merge across issuers (the prior's and the survivor's differ). A survivor radbridge
  does not know yet is fine: the HIS knows it.
- After a merge, an order and a study that were flagged because their patients
  differed, and now agree, are linked (and the study routed again).

Functions here work inside the caller's transaction; :class:`OrderStore` owns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, or_, select, union, update

from broker.model.domain import LinkState, Patient, StudyState
from broker.model.identity import (
    ConflictAction,
    ConflictKind,
    ConflictReason,
    ConflictReport,
    IdentityConflictError,
)
from broker.store.conflicts import settle_flagged
from broker.store.order_links import patient_conflict, save_link
from broker.store.studies import _insert
from broker.store.tables import order_links, orders, patients, studies

PATIENT_COLUMNS = {
    "patient_id": "patient_id",
    "issuer": "issuer_of_patient_id",
    "name": "patient_name",
    "birth_date": "patient_birth_date",
    "sex": "patient_sex",
}


def same_patient(table: Any, patient: Patient) -> ColumnElement[bool]:
    """Rows of ``patient``: same ID; the issuer must agree only where both sides have one."""
    condition: ColumnElement[bool] = table.c.patient_id == patient.patient_id
    if patient.issuer:
        issuer = table.c.issuer_of_patient_id
        condition = and_(condition, or_(issuer.is_(None), issuer == "", issuer == patient.issuer))
    return condition


def upsert_patient(conn: Connection, patient: Patient, now: datetime) -> int:
    """The ``patients`` row of ``patient`` (made or filled in); its id."""
    values = {
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": patient.issuer or "",
        "patient_name": patient.name,
        "patient_birth_date": patient.birth_date,
        "patient_sex": patient.sex,
        "updated_at": now,
    }
    stmt = _insert(conn, patients).values(values)
    fill = {k: stmt.excluded[k] for k in values if values[k] is not None}
    stmt = stmt.on_conflict_do_update(
        index_elements=["patient_id", "issuer_of_patient_id"], set_=fill
    ).returning(patients.c.id)
    return int(conn.execute(stmt).scalar_one())


def issuers_of(conn: Connection, patient_id: str) -> set[str]:
    """Every issuer radbridge holds this patient ID for (studies, orders, ADT); '' for none."""
    found = union(
        *(
            select(table.c.issuer_of_patient_id.label("issuer")).where(
                table.c.patient_id == patient_id
            )
            for table in (studies, orders, patients)
        )
    )
    return {row.issuer or "" for row in conn.execute(found)}


def _refused(
    kind: ConflictKind, reason: ConflictReason, detail: str, subject: str, **report: Any
) -> IdentityConflictError:
    return IdentityConflictError(
        ConflictReport(
            kind=kind,
            action=ConflictAction.REFUSED,
            reason=reason,
            detail=detail,
            subject=subject,
            matched_on="patient_id",
            **report,
        )
    )


def _single_issuer(conn: Connection, patient: Patient) -> tuple[str | None, set[str]]:
    """The issuer the patient is held for: its own, else the one radbridge holds; and all
    radbridge holds for the ID."""
    held = issuers_of(conn, patient.patient_id or "")
    if patient.issuer:
        return patient.issuer, held
    named = held - {""}
    return (next(iter(named)) if len(named) == 1 else None), held


def check_update(conn: Connection, patient: Patient) -> None:
    """Refuse an update whose ID without issuer radbridge holds for several issuers."""
    if patient.issuer:
        return
    named = issuers_of(conn, patient.patient_id or "") - {""}
    if len(named) > 1:
        raise _refused(
            ConflictKind.PATIENT_UPDATE,
            ConflictReason.AMBIGUOUS_ISSUER,
            f"the patient ID is held for {len(named)} issuers (sites) and the message names "
            "none; nothing was changed; valid: the issuer of the patient ID "
            "(assigning authority, CX-4)",
            f"patient ID {patient.patient_id}",
            claimed=patient,
        )


def check_merge(conn: Connection, surviving: Patient, prior: Patient) -> None:
    """Refuse a merge that is not safe to apply (see the module)."""
    subject = f"prior patient ID {prior.patient_id}"
    report = {"held": prior, "claimed": surviving}
    if surviving.patient_id == prior.patient_id and patient_conflict(surviving, prior) is None:
        raise _refused(
            ConflictKind.PATIENT_MERGE,
            ConflictReason.SAME_PATIENT,
            "the prior patient (MRG-1) is the surviving patient (PID-3); nothing was merged; "
            "valid: two different patients",
            subject,
            **report,
        )
    prior_issuer, prior_held = _single_issuer(conn, prior)
    if not prior_held or (prior.issuer and prior.issuer not in prior_held and "" not in prior_held):
        raise _refused(
            ConflictKind.PATIENT_MERGE,
            ConflictReason.UNKNOWN_PATIENT,
            "radbridge holds no study, order or patient with the prior patient ID (MRG-1)"
            + (" and issuer" if prior.issuer else "")
            + "; nothing was merged; valid: a patient radbridge knows",
            subject,
            **report,
        )
    if prior_issuer is None and len(prior_held - {""}) > 1:
        raise _refused(
            ConflictKind.PATIENT_MERGE,
            ConflictReason.AMBIGUOUS_ISSUER,
            f"the prior patient ID (MRG-1) is held for {len(prior_held - {''})} issuers "
            "(sites) and the message names none; nothing was merged; valid: the issuer "
            "of the prior patient ID (MRG-1.4)",
            subject,
            **report,
        )
    surviving_issuer, _ = _single_issuer(conn, surviving)
    if prior_issuer and surviving_issuer and prior_issuer != surviving_issuer:
        raise _refused(
            ConflictKind.PATIENT_MERGE,
            ConflictReason.ACROSS_ISSUERS,
            "the prior and the surviving patient IDs are of different issuers (sites); "
            "radbridge does not merge patients across issuers; nothing was merged; "
            "valid: a prior and a surviving patient of the same issuer",
            subject,
            **report,
        )


def studies_changed_by(conn: Connection, patient: Patient) -> list[str]:
    """The studies of ``patient`` whose name, birth date or sex an update would change."""
    differ = [
        studies.c[column].is_distinct_from(getattr(patient, attr))
        for attr, column in PATIENT_COLUMNS.items()
        if attr in ("name", "birth_date", "sex") and getattr(patient, attr) is not None
    ]
    if not differ:
        return []
    return list(
        conn.execute(
            select(studies.c.study_uid).where(same_patient(studies, patient), or_(*differ))
        ).scalars()
    )


def apply_update(conn: Connection, patient: Patient, now: datetime) -> dict[str, Any]:
    """Register or update the patient and rename its studies and orders; what changed."""
    changes = {
        column: getattr(patient, attr)
        for attr, column in PATIENT_COLUMNS.items()
        if attr in ("name", "birth_date", "sex") and getattr(patient, attr) is not None
    }
    row_id = upsert_patient(conn, patient, now)
    counts = {"studies": 0, "orders": 0}
    if changes:
        for table, key in ((studies, "studies"), (orders, "orders")):
            counts[key] = conn.execute(
                update(table).where(same_patient(table, patient)).values(changes)
            ).rowcount
    fields = [attr for attr, column in PATIENT_COLUMNS.items() if column in changes]
    return {"patient": row_id, "fields": fields, **counts}


def apply_merge(
    conn: Connection, surviving: Patient, prior: Patient, now: datetime
) -> dict[str, Any]:
    """Move the prior patient's studies and orders to the survivor; link the flagged order ↔
    study pairs that agree now. What moved (study UIDs, order ids) and the patient rows."""
    moved_to = {
        column: getattr(surviving, attr)
        for attr, column in PATIENT_COLUMNS.items()
        if getattr(surviving, attr) is not None
    }
    survivor_id = upsert_patient(conn, surviving, now)
    prior_id = upsert_patient(conn, prior, now)
    conn.execute(
        update(patients)
        .where(patients.c.id == prior_id)
        .values(merged_into=survivor_id, updated_at=now)
    )
    study_uids = list(
        conn.execute(select(studies.c.study_uid).where(same_patient(studies, prior))).scalars()
    )
    order_ids = list(conn.execute(select(orders.c.id).where(same_patient(orders, prior))).scalars())
    for table in (studies, orders):
        conn.execute(update(table).where(same_patient(table, prior)).values(moved_to))
    relinked = _relink(conn, study_uids, order_ids, now)
    return {
        "patient": survivor_id,
        "prior": prior_id,
        "studies": study_uids,
        "orders": order_ids,
        "relinked": relinked,
    }


def _relink(
    conn: Connection, study_uids: Sequence[str], order_ids: Sequence[int], now: datetime
) -> list[str]:
    """Link the flagged pairs among the moved studies and orders whose patients agree now."""
    if not study_uids and not order_ids:
        return []
    flagged = conn.execute(
        select(order_links).where(
            order_links.c.state == LinkState.PATIENT_MISMATCH.value,
            or_(
                order_links.c.study_uid.in_(list(study_uids)),
                order_links.c.order_id.in_(list(order_ids)),
            ),
        )
    ).all()
    relinked = []
    for link in flagged:
        study = conn.execute(
            select(studies.c.patient_id, studies.c.issuer_of_patient_id, studies.c.state).where(
                studies.c.study_uid == link.study_uid
            )
        ).one_or_none()
        order = conn.execute(
            select(orders.c.patient_id, orders.c.issuer_of_patient_id).where(
                orders.c.id == link.order_id
            )
        ).one_or_none()
        if study is None or order is None:
            continue
        as_patient = [
            Patient(patient_id=r.patient_id, issuer=r.issuer_of_patient_id) for r in (order, study)
        ]
        if patient_conflict(*as_patient) is not None:
            continue
        save_link(
            conn,
            link.study_uid,
            link.order_id,
            LinkState.LINKED,
            matched_on=link.matched_on,
            now=now,
        )
        settle_flagged(
            conn,
            link.study_uid,
            link.order_id,
            why="an ADT merge made the order's and the study's patient the same",
            now=now,
        )
        if study.state == StudyState.STABLE.value:
            conn.execute(
                update(studies)
                .where(studies.c.study_uid == link.study_uid)
                .values(route_due_at=now)
            )
        relinked.append(link.study_uid)
    return relinked


def merged_into(conn: Connection, prior: Patient, survivor: Patient) -> bool:
    """Whether an ADT merge moved ``prior`` into ``survivor`` (directly or through others):
    a result made before the merge may still name the prior patient."""
    c = patients.c
    current: Any = conn.execute(
        select(c.id, c.merged_into).where(
            c.patient_id == prior.patient_id, c.issuer_of_patient_id == (prior.issuer or "")
        )
    ).one_or_none()
    seen: set[int] = set()
    while current is not None and current.merged_into is not None and current.id not in seen:
        seen.add(current.id)
        current = conn.execute(
            select(c.id, c.merged_into, c.patient_id, c.issuer_of_patient_id).where(
                c.id == current.merged_into
            )
        ).one_or_none()
        if current is not None:
            found = Patient(patient_id=current.patient_id, issuer=current.issuer_of_patient_id)
            if patient_conflict(found, survivor) is None:
                return True
    return False
