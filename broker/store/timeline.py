"""A study's time ledger, gathered from the tables that keep its times; turnaround rows.

Each :data:`SOURCES` function reads one part of the ledger for a study in one
connection: the study's instances, its history (what completed it), its jobs
(routed, sent), their results and their write-backs and notifications. A
feature that keeps times of its own (critical-result notifications and their
acknowledgement, say) adds a function here; every view of the ledger (the CLI,
the API, the console) shows its stamps, in time order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, type_coerce

from broker.model.errors import NotFoundError
from broker.model.jobs import JobState
from broker.model.timeline import Stamp, StampKind, Turnaround
from broker.model.writeback import DeliveryKind, DeliveryState
from broker.store.critical import timeline_stamps
from broker.store.priors import timeline_stamps as prior_stamps
from broker.store.study_events import StudyEventKind
from broker.store.tables import (
    UTCDateTime,
    deliveries,
    delivery_events,
    job_events,
    jobs,
    results,
    studies,
    study_events,
)

StampSource = Callable[[Connection, str], Iterable[Stamp]]
"""Reads some of a study's stamps (``conn``, ``study_uid``)."""


def _instances(conn: Connection, study_uid: str) -> Iterable[Stamp]:
    row = conn.execute(
        select(studies.c.first_received_at, studies.c.last_received_at).where(
            studies.c.study_uid == study_uid
        )
    ).first()
    if row is None:
        return []
    return [
        Stamp(row.first_received_at, StampKind.FIRST_INSTANCE),
        Stamp(row.last_received_at, StampKind.LAST_INSTANCE),
    ]


def _history(conn: Connection, study_uid: str) -> Iterable[Stamp]:
    rows = conn.execute(
        select(study_events)
        .where(study_events.c.study_uid == study_uid)
        .order_by(study_events.c.id)
    )
    return [Stamp(r.at, r.kind, None, r.reason, r.detail) for r in rows]


def _jobs(conn: Connection, study_uid: str) -> Iterable[Stamp]:
    out: list[Stamp] = []
    mine = conn.execute(
        select(jobs.c.id, jobs.c.vendor, jobs.c.route, jobs.c.created_at).where(
            jobs.c.study_uid == study_uid
        )
    ).all()
    for job in mine:
        out.append(Stamp(job.created_at, StampKind.ROUTED, job.vendor, None, job.route, job.id))
    ids = [job.id for job in mine]
    if not ids:
        return out
    vendor = {job.id: job.vendor for job in mine}
    sent = conn.execute(
        select(job_events.c.job_id, job_events.c.at, job_events.c.attempt)
        .where(job_events.c.job_id.in_(ids), job_events.c.to_state == JobState.SENT.value)
        .order_by(job_events.c.id)
    )
    for e in sent:
        out.append(
            Stamp(e.at, StampKind.SENT, vendor[e.job_id], None, f"attempt {e.attempt}", e.job_id)
        )
    got = conn.execute(
        select(
            results.c.id,
            results.c.job_id,
            results.c.vendor,
            results.c.created_at,
            results.c.completed_at,
            results.c.urgent,
        ).where(results.c.study_uid == study_uid)
    )
    for r in got:
        out.append(
            Stamp(
                r.completed_at or r.created_at,
                StampKind.RESULT_RECEIVED,
                r.vendor,
                "urgent" if r.urgent else None,
                f"result {r.id}",
                r.job_id,
            )
        )
    return out


def _deliveries(conn: Connection, study_uid: str) -> Iterable[Stamp]:
    rows = conn.execute(
        select(
            deliveries.c.id,
            deliveries.c.job_id,
            deliveries.c.target,
            deliveries.c.kind,
            deliveries.c.event,
            delivery_events.c.at,
        )
        .join(delivery_events, delivery_events.c.delivery_id == deliveries.c.id)
        .where(
            deliveries.c.study_uid == study_uid,
            delivery_events.c.to_state == DeliveryState.DONE.value,
        )
        .order_by(delivery_events.c.id)
    )
    return [
        Stamp(
            r.at,
            StampKind.WRITTEN_BACK
            if r.kind == DeliveryKind.RESULT.value
            else StampKind.NOTIFICATION_SENT,
            r.target,
            r.event if r.kind != DeliveryKind.RESULT.value else None,
            f"delivery {r.id} ({r.kind})",
            r.job_id,
        )
        for r in rows
    ]


SOURCES: list[StampSource] = [
    _instances,
    _history,
    _jobs,
    prior_stamps,
    _deliveries,
    timeline_stamps,
]
"""Every part of the ledger; add a function to add stamps of your own."""


def study_timeline(engine: Engine, study_uid: str) -> list[Stamp]:
    """The study's stamps in time order; :class:`NotFoundError` for an unknown study."""
    with engine.connect() as conn:
        known = conn.execute(select(studies.c.id).where(studies.c.study_uid == study_uid)).first()
        if known is None:
            raise NotFoundError(f"no study with Study Instance UID {study_uid}")
        stamps = [stamp for source in SOURCES for stamp in source(conn, study_uid)]
    return sorted(stamps, key=lambda s: s.at)


def _first(column: Any) -> Any:
    return type_coerce(func.min(column), UTCDateTime)


def turnaround(engine: Engine, since: datetime, until: datetime) -> list[Turnaround]:
    """One row per job of the studies whose first instance came in [since, until)."""
    sent = (
        select(job_events.c.job_id, _first(job_events.c.at).label("at"))
        .where(job_events.c.to_state == JobState.SENT.value)
        .group_by(job_events.c.job_id)
        .subquery()
    )
    received = func.coalesce(results.c.completed_at, results.c.created_at)
    result = (
        select(results.c.job_id, _first(received).label("at"))
        .where(results.c.job_id.is_not(None))
        .group_by(results.c.job_id)
        .subquery()
    )
    written = (
        select(
            deliveries.c.job_id,
            type_coerce(func.max(delivery_events.c.at), UTCDateTime).label("at"),
        )
        .join(delivery_events, delivery_events.c.delivery_id == deliveries.c.id)
        .where(
            deliveries.c.kind == DeliveryKind.RESULT.value,
            delivery_events.c.to_state == DeliveryState.DONE.value,
        )
        .group_by(deliveries.c.job_id)
        .subquery()
    )
    first_complete = (
        select(study_events.c.study_uid, func.min(study_events.c.id).label("id"))
        .where(study_events.c.kind == StudyEventKind.COMPLETE.value)
        .group_by(study_events.c.study_uid)
        .subquery()
    )
    complete = study_events.alias("complete")
    stmt = (
        select(
            jobs.c.study_uid,
            jobs.c.route,
            jobs.c.vendor,
            jobs.c.priority,
            jobs.c.state,
            jobs.c.created_at,
            studies.c.first_received_at,
            studies.c.stable_at,
            complete.c.at.label("complete_at"),
            complete.c.reason.label("complete_reason"),
            sent.c.at.label("sent_at"),
            result.c.at.label("result_at"),
            written.c.at.label("written_at"),
        )
        .join(studies, studies.c.study_uid == jobs.c.study_uid)
        .outerjoin(first_complete, first_complete.c.study_uid == jobs.c.study_uid)
        .outerjoin(complete, complete.c.id == first_complete.c.id)
        .outerjoin(sent, sent.c.job_id == jobs.c.id)
        .outerjoin(result, result.c.job_id == jobs.c.id)
        .outerjoin(written, written.c.job_id == jobs.c.id)
        .where(and_(studies.c.first_received_at >= since, studies.c.first_received_at < until))
        .order_by(studies.c.first_received_at, jobs.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        Turnaround(
            study_uid=r.study_uid,
            route=r.route,
            vendor=r.vendor,
            priority=r.priority,
            state=r.state,
            first_instance=r.first_received_at,
            complete=r.complete_at or r.stable_at,
            complete_reason=r.complete_reason,
            routed=r.created_at,
            sent=r.sent_at,
            result=r.result_at,
            written_back=r.written_at,
        )
        for r in rows
    ]
