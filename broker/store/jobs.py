"""Jobs in the store: create (idempotent), resend, cancel, list; claims, leases, retries and
history come from the job engine's store (:class:`broker.store.work.WorkStore`).

A job's lane is its vendor: claims urgent first (stat, urgent, routine), then
oldest, and never more live leases at once than the vendor's concurrency.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Table,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import Priority
from broker.model.errors import StoreError
from broker.model.jobs import (
    MACHINE,
    RESENDABLE,
    Job,
    JobChangedError,
    JobEvent,
    JobState,
    JobStateError,
)
from broker.model.logging import get_logger
from broker.model.mode import ShadowCause
from broker.store.contracts import return_use
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import job_events, jobs
from broker.store.work import MAX_ERROR, WorkKind, WorkStore, clip, utc
from broker.store.work_claims import attempt_fields, event_fields, record_event

LOG = get_logger("radbridge.jobs")

__all__ = ["MAX_ERROR", "Created", "JobChangedError", "JobStore", "cancel_for_studies"]

_now = utc  # what other stores of job rows (job tokens) take "now" with


@dataclass(frozen=True, slots=True)
class Created:
    """What ``create`` did: the job, and whether it already existed (a duplicate)."""

    job: Job
    duplicate: bool


def _job(r: Row[Any]) -> Job:
    return Job(
        id=r.id,
        study_uid=r.study_uid,
        vendor=r.vendor,
        route=r.route,
        priority=Priority(r.priority),
        state=JobState(r.state),
        series_uids=tuple(json.loads(r.series_uids)),
        deadline_at=r.deadline_at,
        study_revision=r.study_revision,
        shadow=ShadowCause(r.shadow) if r.shadow else None,
        **attempt_fields(r),
    )


def _event(r: Row[Any]) -> JobEvent:
    return JobEvent(job_id=r.job_id, **event_fields(r, JobState))


def _urgent_first(t: Table) -> list[Any]:
    rank = case({p.value: p.rank for p in Priority}, value=t.c.priority, else_=len(Priority))
    return [rank, t.c.id]


JOBS: WorkKind[Job, JobState, JobEvent] = WorkKind(
    machine=MACHINE,
    table=jobs,
    events=job_events,
    event_key="job_id",
    lane="vendor",
    order=_urgent_first,
    item=_job,
    event=_event,
)


def _record(
    conn: Connection,
    job_id: int,
    *,
    at: datetime,
    from_state: JobState | None,
    to_state: JobState,
    attempt: int,
    error: str | None = None,
) -> None:
    """Append a job's history row inside the caller's transaction (results, cancellations)."""
    record_event(
        conn,
        job_events,
        {"job_id": job_id},
        at=at,
        from_state=from_state,
        to_state=to_state,
        attempt=attempt,
        error=error,
    )


def _cancelled(conn: Connection, job_id: int, study_uid: str, vendor: str) -> None:
    """A job was cancelled (same transaction): a use it reserved and never sent goes back."""
    returned = return_use(conn, job_id, study_uid, vendor)
    if returned is not None:
        LOG.info(
            "reserved use returned to the contract: the job was cancelled before it was sent",
            job_id=job_id,
            vendor=vendor,
            contract=returned.contract,
            period=returned.period,
        )


class JobStore(WorkStore[Job, JobState, JobEvent]):
    """The jobs table and its history. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, JOBS)

    def entered(self, conn: Connection, row: Row[Any], state: JobState, now: datetime) -> None:
        """A job now cancelled gives back the contract use it reserved, if it was never sent
        (an operator's cancel also tells its vendor: :class:`~broker.store.corrections.
        OperatorJobStore`)."""
        if state is JobState.CANCELLED:
            _cancelled(conn, row.id, row.study_uid, row.vendor)

    def create(
        self,
        study_uid: str,
        vendor: str,
        *,
        route: str,
        priority: Priority = Priority.ROUTINE,
        max_attempts: int = 5,
        series_uids: Sequence[str] = (),
        deadline_at: datetime | None = None,
        study_revision: int = 0,
        snapshot: str | None = None,
        now: datetime | None = None,
        shadow: ShadowCause | None = None,
    ) -> Created:
        """A pending job for ``study_uid`` and ``vendor``; the existing one if there is one.

        ``shadow``: why it runs as a silent trial (None: live)."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts is {max_attempts}; valid: 1 or more")
        now = utc(now)
        values = {
            "study_uid": study_uid,
            "vendor": vendor,
            "route": route,
            "priority": Priority(priority).value,
            "state": JobState.PENDING.value,
            "attempts": 0,
            "max_attempts": max_attempts,
            "series_uids": json.dumps(list(series_uids)),
            "deadline_at": deadline_at,
            "next_attempt_at": None,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
            "study_revision": study_revision,
            "shadow": shadow.value if shadow is not None else None,
        }
        stmt = (
            _insert(self.engine, jobs)
            .values(values)
            .on_conflict_do_nothing(index_elements=[jobs.c.study_uid, jobs.c.vendor])
            .returning(jobs.c.id)
        )
        try:
            with writing(self.engine) as conn:
                new_id = conn.execute(stmt).scalar_one_or_none()
                if new_id is not None:
                    self.record(
                        conn,
                        new_id,
                        at=now,
                        from_state=None,
                        to_state=JobState.PENDING,
                        attempt=0,
                        snapshot=snapshot,
                    )
                row = conn.execute(
                    select(jobs).where(jobs.c.study_uid == study_uid, jobs.c.vendor == vendor)
                ).one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create a job for vendor '{vendor}': {exc}") from exc
        return Created(job=_job(row), duplicate=new_id is None)

    def resend(
        self,
        job_id: int,
        *,
        study_revision: int,
        series_uids: Sequence[str],
        snapshot: str | None = None,
        now: datetime | None = None,
    ) -> Job:
        """Send a job again for an updated study (its route resends updates)."""
        job = self.get(job_id)
        if job.state not in RESENDABLE:
            valid = ", ".join(sorted(RESENDABLE))
            raise JobStateError(f"job {job_id} is {job.state}; only a job in {valid} is resent")
        now = utc(now)
        return self.move(
            job_id,
            [JobState.PENDING],
            reset=True,
            error=f"study updated (revision {study_revision}); sent again",
            next_attempt_at=now,
            snapshot=snapshot,
            values={
                "study_revision": study_revision,
                "series_uids": json.dumps(list(series_uids)),
            },
            now=now,
        )

    def cancel(self, job_id: int, *, reason: str = "cancelled", now: datetime | None = None) -> Job:
        """Cancel a job that is not finished (an operator: the API, the console, the CLI); the
        reason goes into its history. A vendor that was sent it by manifest is told, like a
        correction's (``DELETE {url}/{job_id}``, a delivery to ``vendor.NAME``)."""
        return self.move(job_id, [JobState.CANCELLED], error=reason, now=now)

    # ---------------------------------------------------------------- reads
    # (``list`` comes last: defined earlier, its name would shadow the type in annotations)

    def find(self, study_uid: str, vendor: str) -> Job | None:
        """The job of a study for a vendor, if there is one."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.study_uid == study_uid, jobs.c.vendor == vendor)
            ).one_or_none()
        return None if row is None else _job(row)

    def due_retries(self, now: datetime | None = None) -> list[Job]:
        """Failed jobs whose backoff has passed (read only; ``requeue_due`` moves them)."""
        now = utc(now)
        due = or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now)
        found = self.select_items(due, states=JobState.FAILED, limit=1_000_000)
        return sorted(found, key=lambda j: (j.next_attempt_at or now, j.id))

    def next_retry_at(self) -> datetime | None:
        """When the next failed job's backoff ends, if any job is failed."""
        stmt = select(func.min(jobs.c.next_attempt_at)).where(jobs.c.state == JobState.FAILED.value)
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(stmt).scalar_one_or_none()
        return value

    def list(
        self,
        *,
        state: JobState | Iterable[JobState] | None = None,
        vendor: str | None = None,
        study_uid: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, oldest first, filtered by state(s), vendor and study."""
        conditions = []
        if vendor is not None:
            conditions.append(jobs.c.vendor == vendor)
        if study_uid is not None:
            conditions.append(jobs.c.study_uid == study_uid)
        return self.select_items(*conditions, states=state, limit=limit, offset=offset)


#: Jobs an order's cancellation stops: not yet (successfully) sent to the vendor.
CANCELLED_WITH_ORDER: frozenset[JobState] = frozenset(
    {JobState.PENDING, JobState.FAILED, JobState.DEAD}
)


def cancel_for_studies(
    conn: Connection, study_uids: Sequence[str], *, reason: str, now: datetime
) -> int:
    """Inside the caller's transaction: cancel the studies' jobs that were not sent yet."""
    if not study_uids:
        return 0
    return len(cancel_unsent(conn, jobs.c.study_uid.in_(list(study_uids)), reason=reason, now=now))


def cancel_unsent(
    conn: Connection,
    where: ColumnElement[bool],
    *,
    reason: str,
    now: datetime,
    keep: Callable[[Any], bool] = lambda _row: True,
) -> list[int]:
    """Inside the caller's transaction: cancel the jobs ``where`` selects that were not sent
    yet (and that ``keep`` keeps, given the row); their ids."""
    found = conn.execute(
        select(
            jobs.c.id,
            jobs.c.state,
            jobs.c.attempts,
            jobs.c.series_uids,
            jobs.c.study_uid,
            jobs.c.vendor,
        ).where(where, jobs.c.state.in_([s.value for s in CANCELLED_WITH_ORDER]))
    ).all()
    cancelled: list[int] = []
    for row in found:
        if not keep(row):
            continue
        moved = conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id, jobs.c.state == row.state)
            .values(state=JobState.CANCELLED.value, updated_at=now, last_error=clip(reason))
        ).rowcount
        if moved:  # PostgreSQL: a worker may have claimed it meanwhile
            _record(
                conn,
                row.id,
                at=now,
                from_state=JobState(row.state),
                to_state=JobState.CANCELLED,
                attempt=row.attempts,
                error=reason,
            )
            _cancelled(conn, row.id, row.study_uid, row.vendor)
            cancelled.append(row.id)
    return cancelled
