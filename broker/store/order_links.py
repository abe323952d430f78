"""Order ↔ study links: which order a study belongs to, or which order matched but is
flagged because the patient differs.

An order and a study belong together by accession number, otherwise by Study Instance
UID; the patient ID (and its issuer, where both sides have one) must agree, or the link
is kept as ``patient_mismatch`` for an operator and never used for routing. Linking a
stable study asks routing to decide it again (``studies.route_due_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from broker.model.domain import LinkState, OrderLink, Patient, StoredOrder, Study, StudyState
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
    if order.patient_id and study.patient_id and order.patient_id != study.patient_id:
        return "patient ID differs between the order and the study"
    if (
        order.patient_id
        and order.patient_id == study.patient_id
        and order.issuer
        and study.issuer
        and order.issuer != study.issuer
    ):
        return "issuer of patient ID differs between the order and the study"
    return None


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
    """The newest order with the study's accession number, else with its Study Instance UID;
    and what matched."""
    newest = (orders.c.updated_at.desc(), orders.c.id.desc())
    if study.accession_number:
        row = conn.execute(
            select(orders)
            .where(orders.c.accession_number == study.accession_number)
            .order_by(*newest)
            .limit(1)
        ).one_or_none()
        if row is not None:
            return row, "accession"
    row = conn.execute(
        select(orders).where(orders.c.study_uid == study.study_uid).order_by(*newest).limit(1)
    ).one_or_none()
    return row, "study_uid"
