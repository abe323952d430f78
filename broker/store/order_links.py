"""Order ↔ study links: which order a study belongs to, or which order matched but is
flagged because the patient differs.

An order and a study belong together by accession number, otherwise by Study Instance
UID; the patient ID (and its issuer, where both sides have one) must agree, or the link
is kept as ``patient_mismatch`` for an operator and never used for routing, and an
identity conflict (``order_study``, flagged) is recorded. A study already linked to an
order of its own patient keeps that link when another patient's order matches it too.
Linking a stable study asks routing to decide it again (``studies.route_due_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from broker.model.domain import LinkState, OrderLink, Patient, StoredOrder, Study, StudyState
from broker.model.identity import ConflictAction, ConflictKind, ConflictReason, ConflictReport
from broker.model.identity import patient_conflict as _differs
from broker.store.conflicts import record_conflict, settle_flagged
from broker.store.tables import order_links, orders, studies


def link_of(r: Row[Any]) -> OrderLink:
    """A row of ``order_links`` as a domain link."""
    return OrderLink(
        study_uid=r.study_uid,
        order_id=r.order_id,
        state=LinkState(r.state),
        matched_on=r.matched_on,
        detail=r.detail,
    )


def patient_conflict(order: Patient, study: Patient) -> str | None:
    """Why the order's patient is not the study's, or None when they may be the same."""
    why = _differs(order, study)
    return None if why is None else f"{why} between the order and the study"


def flag(
    conn: Connection,
    study_uid: str,
    order: StoredOrder,
    study_patient: Patient,
    *,
    matched_on: str,
    detail: str,
    now: datetime,
) -> None:
    """Record the identity conflict of an order and a study that match but name different
    patients (kept, flagged; counted once while it is open)."""
    key = "accession_number" if matched_on == "accession" else matched_on
    value = order.order.accession_number if key == "accession_number" else study_uid
    record_conflict(
        conn,
        ConflictReport(
            kind=ConflictKind.ORDER_STUDY,
            action=ConflictAction.FLAGGED,
            detail=(
                f"the order and the study match by {key.replace('_', ' ')} but {detail}; "
                "the order is not linked and the study is not routed with it"
            ),
            subject=f"{key.replace('_', ' ')} {value}",
            reason=ConflictReason.OTHER_PATIENT,
            matched_on=key,
            held=study_patient,
            claimed=order.order.patient,
            study_uid=study_uid,
            order_id=order.id,
        ),
        source=order.order.source.value,
        now=now,
    )


def _study_patient(r: Any) -> Patient:
    return Patient(patient_id=r.patient_id, issuer=r.issuer_of_patient_id)


def correlate(
    conn: Connection,
    stored: StoredOrder,
    candidates: Sequence[Any],
    *,
    matched_on: str,
    now: datetime,
) -> tuple[list[str], list[str]]:
    """Link the order to the studies that match it (rows with ``study_uid``, ``patient_id``,
    ``issuer_of_patient_id`` and ``state``, found by ``matched_on``); ask routing to decide
    the linked stable ones again. Returns (linked, flagged) study UIDs."""
    order = stored.order
    linked: list[str] = []
    flagged: list[str] = []
    for study in candidates:
        conflict = patient_conflict(order.patient, _study_patient(study))
        state = LinkState.LINKED if conflict is None else LinkState.PATIENT_MISMATCH
        if conflict is not None:
            flag(
                conn,
                study.study_uid,
                stored,
                _study_patient(study),
                matched_on=matched_on,
                detail=conflict,
                now=now,
            )
            if _linked_elsewhere(conn, study.study_uid, stored.id):
                flagged.append(study.study_uid)
                continue
        previous = save_link(
            conn,
            study.study_uid,
            stored.id,
            state,
            matched_on=matched_on,
            now=now,
            detail=conflict,
        )
        if state is LinkState.LINKED:
            if previous is LinkState.PATIENT_MISMATCH:
                settle_flagged(
                    conn, study.study_uid, stored.id, why="the patients agree now", now=now
                )
            linked.append(study.study_uid)
            if previous is not LinkState.LINKED and study.state == StudyState.STABLE.value:
                conn.execute(
                    update(studies)
                    .where(studies.c.study_uid == study.study_uid)
                    .values(route_due_at=now)
                )
        else:
            flagged.append(study.study_uid)
    return linked, flagged


def _linked_elsewhere(conn: Connection, study_uid: str, order_id: int) -> bool:
    """Whether the study is linked (not flagged) to another order than ``order_id``."""
    found = conn.execute(
        select(order_links.c.order_id).where(
            order_links.c.study_uid == study_uid,
            order_links.c.state == LinkState.LINKED.value,
            order_links.c.order_id != order_id,
        )
    ).first()
    return found is not None


def save_link(
    conn: Connection,
    study_uid: str,
    order_id: int,
    state: LinkState,
    *,
    matched_on: str,
    now: datetime,
    detail: str | None = None,
) -> LinkState | None:
    """Upsert the study's link; returns the state it had before (None: no link)."""
    before = conn.execute(
        select(order_links.c.state, order_links.c.order_id).where(
            order_links.c.study_uid == study_uid
        )
    ).one_or_none()
    values = {
        "order_id": order_id,
        "state": state.value,
        "matched_on": matched_on,
        "detail": detail,
        "at": now,
    }
    if before is None:
        conn.execute(insert(order_links).values(study_uid=study_uid, **values))
        return None
    conn.execute(update(order_links).where(order_links.c.study_uid == study_uid).values(values))
    return LinkState(before.state) if before.order_id == order_id else None


def find_for_study(conn: Connection, study: Study) -> tuple[Row[Any] | None, str]:
    """The newest order with the study's accession number, else with its Study Instance UID,
    preferring one of the study's own patient; and what matched."""
    newest = (orders.c.updated_at.desc(), orders.c.id.desc())
    searches = [(orders.c.study_uid == study.study_uid, "study_uid")]
    if study.accession_number:
        searches.insert(0, (orders.c.accession_number == study.accession_number, "accession"))
    same_site = orders.c.site.is_(None) if study.site is None else orders.c.site == study.site
    for condition, matched_on in searches:
        rows = conn.execute(
            select(orders).where(condition, same_site).order_by(*newest).limit(20)
        ).all()
        if rows:
            same = [r for r in rows if patient_conflict(_study_patient(r), study.patient) is None]
            return (same or rows)[0], matched_on
    return None, "study_uid"
