"""Write-back deliveries in the store: create (idempotent), retry, list, overdue jobs; claims,
leases, retries and history come from the job engine's store
(:class:`broker.store.work.WorkStore`), as for vendor jobs.

A delivery's lane is its target: claims urgent first, then oldest, one at a
time per target (the engine's capacity), under a lease like a job's.

A result delivery that reaches ``done`` appends its ``result.written`` audit
row in the same transaction (:func:`_audit_written`), so the trail and the
deliveries never disagree.

Overdue jobs (no result by their deadline) are flagged here too:
:meth:`DeliveryStore.flag_overdue` sets ``jobs.overdue_notified_at`` and makes
the notification's delivery in the same transaction, so each job is notified once.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, Table, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import NotFoundError, StoreError
from broker.model.jobs import Job, JobState, JobStateError
from broker.model.vendor import VENDOR_TARGET_TYPE
from broker.model.writeback import (
    CLAIMABLE,
    MACHINE,
    Delivery,
    DeliveryChangedError,
    DeliveryEvent,
    DeliveryKind,
    DeliveryState,
)
from broker.store.audit import SYSTEM, Action, record_in
from broker.store.engine import writing
from broker.store.jobs import JobStore, _job, _record
from broker.store.studies import _insert, of_sites
from broker.store.tables import deliveries, delivery_events, jobs, result_objects
from broker.store.work import WorkKind, WorkStore, utc
from broker.store.work_claims import attempt_fields, event_fields

#: Jobs that wait for a result and can be overdue (past ``deadline_at``).
OVERDUE_STATES: frozenset[JobState] = frozenset({JobState.SENT, JobState.AWAITING_RESULT})


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to make: what it is about, where it goes, and its retry budget."""

    study_uid: str
    target: str
    target_type: str
    kind: DeliveryKind
    max_attempts: int
    result_id: int | None = None
    job_id: int | None = None
    event: str = "result"
    urgent: bool = False
    correction_id: int | None = None


def new_message_id() -> str:
    """A message id for a new delivery: 20 characters, MSH-10's length in HL7 v2.3 to 2.4."""
    return "RB" + secrets.token_hex(9).upper()


def _delivery(r: Row[Any]) -> Delivery:
    return Delivery(
        id=r.id,
        result_id=r.result_id,
        job_id=r.job_id,
        study_uid=r.study_uid,
        target=r.target,
        target_type=r.target_type,
        kind=DeliveryKind(r.kind),
        event=r.event,
        urgent=bool(r.urgent),
        state=DeliveryState(r.state),
        message_id=r.message_id,
        detail=r.detail,
        correction_id=r.correction_id,
        **attempt_fields(r),
    )


def _event(r: Row[Any]) -> DeliveryEvent:
    return DeliveryEvent(delivery_id=r.delivery_id, **event_fields(r, DeliveryState))


def _urgent_first(t: Table) -> list[Any]:
    return [t.c.urgent.desc(), t.c.id]


DELIVERIES: WorkKind[Delivery, DeliveryState, DeliveryEvent] = WorkKind(
    machine=MACHINE,
    table=deliveries,
    events=delivery_events,
    event_key="delivery_id",
    lane="target",
    order=_urgent_first,
    item=_delivery,
    event=_event,
)

#: Target types that send the result's DICOM objects (audited by SOP Instance UID).
DICOM_TARGET_TYPES = frozenset({"dicom", "dicomweb"})


def _audit_written(conn: Connection, row: Row[Any], now: datetime) -> None:
    """The ``result.written`` audit row of a result delivery that is done in this transaction."""
    detail: dict[str, Any] = {
        "result_id": row.result_id,
        "job_id": row.job_id,
        "study_uid": row.study_uid,
        "target": row.target,
        "target_type": row.target_type,
        "outcome": row.detail,
    }
    if row.target_type in DICOM_TARGET_TYPES:
        detail["sop_instance_uids"] = list(
            conn.execute(
                select(result_objects.c.sop_instance_uid)
                .where(result_objects.c.result_id == row.result_id)
                .order_by(result_objects.c.id)
            ).scalars()
        )
    elif row.target_type == "hl7":
        detail["control_id"] = row.message_id  # MSH-10 of the ORU
    else:
        detail["message_id"] = row.message_id  # the FHIR Bundle identifier
    record_in(conn, SYSTEM, Action.RESULT_WRITTEN, f"delivery:{row.id}", detail=detail, now=now)


def audit_corrected(conn: Connection, row: Row[Any], now: datetime) -> None:
    """The ``result.corrected`` audit row of a correction delivery done in this transaction
    (``job.withdrawn``: a vendor told of a cancelled job, with the delivery's id)."""
    detail: dict[str, Any] = {
        "result_id": row.result_id,
        "job_id": row.job_id,
        "study_uid": row.study_uid,
        "target": row.target,
        "target_type": row.target_type,
        "cause": row.event,
        "correction_id": row.correction_id,
        "message_id": row.message_id,
        "outcome": row.detail,
    }
    if row.target_type == VENDOR_TARGET_TYPE:  # a vendor told of a cancelled job
        detail.pop("result_id")
        record_in(conn, SYSTEM, Action.JOB_WITHDRAWN, f"job:{row.job_id}", detail=detail, now=now)
        return
    record_in(conn, SYSTEM, Action.RESULT_CORRECTED, f"delivery:{row.id}", detail=detail, now=now)


class DeliveryStore(WorkStore[Delivery, DeliveryState, DeliveryEvent]):
    """The deliveries table and its history. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, DELIVERIES)

    def entered(self, conn: Connection, row: Row[Any], state: DeliveryState, now: datetime) -> None:
        """A result delivery now done gets its ``result.written`` audit row, same transaction."""
        if state is DeliveryState.DONE and row.kind == DeliveryKind.RESULT.value:
            _audit_written(conn, row, now)
        elif state is DeliveryState.DONE and row.kind == DeliveryKind.CORRECTION.value:
            audit_corrected(conn, row, now)

    # ---------------------------------------------------------------- create

    def create(self, new: Sequence[NewDelivery], *, now: datetime | None = None) -> list[Delivery]:
        """Make the deliveries (an existing one for the same result, target and kind is kept).

        Returns every delivery asked for, new or existing, in the order given.
        """
        now = utc(now)
        made: list[Delivery] = []
        try:
            with writing(self.engine) as conn:
                for d in new:
                    made.append(self._create(conn, d, now))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create deliveries: {exc}") from exc
        return made

    def create_in(self, conn: Connection, d: NewDelivery, now: datetime) -> Delivery:
        """Make one delivery in the caller's transaction (e.g. with the row it is about)."""
        return self._create(conn, d, utc(now))

    def _create(self, conn: Connection, d: NewDelivery, now: datetime) -> Delivery:
        if d.max_attempts < 1:
            raise ValueError(f"max_attempts is {d.max_attempts}; valid: 1 or more")
        values = {
            "result_id": d.result_id,
            "job_id": d.job_id,
            "study_uid": d.study_uid,
            "target": d.target,
            "target_type": d.target_type,
            "kind": d.kind.value,
            "event": d.event,
            "urgent": d.urgent,
            "correction_id": d.correction_id,
            "state": DeliveryState.PENDING.value,
            "attempts": 0,
            "max_attempts": d.max_attempts,
            "message_id": new_message_id(),
            "created_at": now,
            "updated_at": now,
        }
        stmt = _insert(self.engine, deliveries).values(values)
        if d.result_id is not None:
            stmt = stmt.on_conflict_do_nothing(
                index_elements=[deliveries.c.result_id, deliveries.c.target, deliveries.c.kind]
            )
        new_id = conn.execute(stmt.returning(deliveries.c.id)).scalar_one_or_none()
        if new_id is not None:
            self.record(
                conn, new_id, at=now, from_state=None, to_state=DeliveryState.PENDING, attempt=0
            )
            row = conn.execute(select(deliveries).where(deliveries.c.id == new_id))
        else:
            row = conn.execute(
                select(deliveries).where(
                    deliveries.c.result_id == d.result_id,
                    deliveries.c.target == d.target,
                    deliveries.c.kind == d.kind.value,
                )
            )
        return _delivery(row.one())

    # ---------------------------------------------------------------- transitions

    def retry(self, delivery_id: int, *, now: datetime | None = None) -> Delivery:
        """Operator: start a dead or failed delivery over (pending, attempts reset).

        A job that went dead because of this write-back goes back to
        ``writing_back``, so that it can still end ``done``.
        """
        moved = super().retry(delivery_id, now=now)
        if moved.job_id is not None and moved.kind is DeliveryKind.RESULT:
            self._revive_job(moved.job_id, now=utc(now))
        return moved

    def _revive_job(self, job_id: int, *, now: datetime) -> None:
        jobs_store = JobStore(self.engine)
        try:
            job = jobs_store.get(job_id)
        except NotFoundError:
            return
        if job.state is not JobState.DEAD:
            return
        history = jobs_store.history(job_id)
        if not history or history[-1].from_state is not JobState.WRITING_BACK:
            return
        with contextlib.suppress(JobStateError):  # moved meanwhile: leave it
            jobs_store.finish(
                job_id, JobState.WRITING_BACK, error="write-back retried by the operator", now=now
            )

    # ---------------------------------------------------------------- overdue jobs

    def overdue_jobs(
        self,
        *,
        now: datetime | None = None,
        limit: int = 1000,
        sites: frozenset[str] | None = None,
    ) -> list[Job]:
        """Jobs still waiting for their result (sent, awaiting_result) past their deadline
        (only ``sites``' studies' when given)."""
        now = utc(now)
        stmt = (
            select(jobs)
            .where(
                jobs.c.state.in_([s.value for s in OVERDUE_STATES]),
                jobs.c.deadline_at.is_not(None),
                jobs.c.deadline_at <= now,
            )
            .order_by(jobs.c.deadline_at, jobs.c.id)
            .limit(limit)
        )
        if sites is not None:
            stmt = stmt.where(jobs.c.study_uid.in_(of_sites(sites)))
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt).all()]

    def next_overdue(self) -> datetime | None:
        """The earliest deadline of a job not yet flagged overdue (None: no such job)."""
        with self.engine.connect() as conn:
            found: datetime | None = conn.execute(
                select(func.min(jobs.c.deadline_at)).where(
                    jobs.c.state.in_([s.value for s in OVERDUE_STATES]),
                    jobs.c.overdue_notified_at.is_(None),
                )
            ).scalar_one_or_none()
        return found

    def flag_overdue(
        self,
        *,
        notify: NewDelivery | None = None,
        now: datetime | None = None,
        limit: int = 100,
    ) -> list[tuple[Job, Delivery | None]]:
        """Flag overdue jobs not flagged yet: set ``overdue_notified_at`` and, with ``notify``
        (a template: its target, type and attempts), make each one's notification delivery,
        in one transaction per job. Each job is flagged once."""
        now = utc(now)
        candidates = select(jobs).where(
            jobs.c.state.in_([s.value for s in OVERDUE_STATES]),
            jobs.c.deadline_at.is_not(None),
            jobs.c.deadline_at <= now,
            jobs.c.overdue_notified_at.is_(None),
        )
        flagged: list[tuple[Job, Delivery | None]] = []
        with self.engine.connect() as conn:
            rows = conn.execute(candidates.order_by(jobs.c.id).limit(limit)).all()
        for row in rows:
            job = _job(row)
            try:
                with writing(self.engine) as conn:
                    marked = conn.execute(
                        update(jobs)
                        .where(jobs.c.id == job.id, jobs.c.overdue_notified_at.is_(None))
                        .values(overdue_notified_at=now)
                    ).rowcount
                    if not marked:
                        continue
                    _record(
                        conn,
                        job.id,
                        at=now,
                        from_state=job.state,
                        to_state=job.state,
                        attempt=job.attempts,
                        error=f"overdue: no result by {job.deadline_at:%Y-%m-%d %H:%M:%S} UTC",
                    )
                    made = None
                    if notify is not None:
                        made = self._create(
                            conn,
                            NewDelivery(
                                study_uid=job.study_uid,
                                target=notify.target,
                                target_type=notify.target_type,
                                kind=DeliveryKind.NOTIFY,
                                max_attempts=notify.max_attempts,
                                job_id=job.id,
                                event="overdue",
                                urgent=True,
                            ),
                            now,
                        )
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot flag job {job.id} overdue: {exc}") from exc
            flagged.append((job, made))
        return flagged

    # ---------------------------------------------------------------- reads
    # (``list`` comes last: defined earlier, its name would shadow the type in annotations)

    def for_job(
        self, job_id: int, kind: DeliveryKind | None = DeliveryKind.RESULT
    ) -> list[Delivery]:
        """A job's deliveries (by default only those that write its results back)."""
        return self.list(job_id=job_id, kind=kind, limit=1_000_000)

    def original(self, correction: Delivery) -> Delivery | None:
        """The ``result`` delivery a ``correction`` delivery corrects (same result, target)."""
        if correction.result_id is None:
            return None
        found = self.list(
            result_id=correction.result_id, target=correction.target, kind=DeliveryKind.RESULT
        )
        return found[0] if found else None

    def list(
        self,
        *,
        state: DeliveryState | Iterable[DeliveryState] | None = None,
        target: str | None = None,
        result_id: int | None = None,
        job_id: int | None = None,
        kind: DeliveryKind | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[Delivery]:
        """Deliveries, oldest first, filtered by state(s), target, result, job and kind."""
        t = deliveries
        conditions = [
            column == value
            for column, value in (
                (t.c.target, target),
                (t.c.result_id, result_id),
                (t.c.job_id, job_id),
                (t.c.kind, kind.value if kind is not None else None),
            )
            if value is not None
        ]
        return self.select_items(*conditions, states=state, limit=limit, offset=offset)


__all__ = [
    "CLAIMABLE",
    "OVERDUE_STATES",
    "DeliveryChangedError",
    "DeliveryStore",
    "NewDelivery",
]
