"""Jobs in the store: create (idempotent), claim, finish, retry, cancel, list, history.

Every change of state is one write transaction that checks the transition
(:func:`broker.model.jobs.check_transition`), updates the row only if it is still in
the state that was read, and appends a ``job_events`` row: the history and
the job never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import Priority
from broker.model.errors import NotFoundError, StoreError
from broker.model.jobs import (
    CLAIMABLE,
    RESENDABLE,
    RETRYABLE,
    UNFINISHED,
    Job,
    JobEvent,
    JobState,
    JobStateError,
    check_transition,
)
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import job_events, jobs

#: Longest error text kept per event; vendors can answer with whole pages.
MAX_ERROR = 2000


@dataclass(frozen=True, slots=True)
class Created:
    """What ``create`` did: the job, and whether it already existed (a duplicate)."""

    job: Job
    duplicate: bool


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _error(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR]


def _job(r: Row[Any]) -> Job:
    return Job(
        id=r.id,
        study_uid=r.study_uid,
        vendor=r.vendor,
        route=r.route,
        priority=Priority(r.priority),
        state=JobState(r.state),
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        series_uids=tuple(json.loads(r.series_uids)),
        deadline_at=r.deadline_at,
        next_attempt_at=r.next_attempt_at,
        last_error=r.last_error,
        created_at=r.created_at,
        updated_at=r.updated_at,
        study_revision=r.study_revision,
    )


def _event(r: Row[Any]) -> JobEvent:
    return JobEvent(
        job_id=r.job_id,
        at=r.at,
        from_state=JobState(r.from_state) if r.from_state else None,
        to_state=JobState(r.to_state),
        attempt=r.attempt,
        error=r.error,
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
    conn.execute(
        insert(job_events).values(
            job_id=job_id,
            at=at,
            from_state=from_state.value if from_state else None,
            to_state=to_state.value,
            attempt=attempt,
            error=_error(error),
        )
    )


class JobChangedError(JobStateError):
    """The job changed state between reading it and writing it (another process moved it)."""


class JobStore:
    """The jobs table and its history. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---------------------------------------------------------------- create

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
        now: datetime | None = None,
    ) -> Created:
        """A pending job for ``study_uid`` and ``vendor``; the existing one if there is one."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts is {max_attempts}; valid: 1 or more")
        now = _now(now)
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
                    _record(
                        conn, new_id, at=now, from_state=None, to_state=JobState.PENDING, attempt=0
                    )
                row = conn.execute(
                    select(jobs).where(jobs.c.study_uid == study_uid, jobs.c.vendor == vendor)
                ).one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create a job for vendor '{vendor}': {exc}") from exc
        return Created(job=_job(row), duplicate=new_id is None)

    # ---------------------------------------------------------------- transitions

    def claim(
        self, job_id: int, *, attempt: int | None = None, now: datetime | None = None
    ) -> Job | None:
        """Start an attempt: pending|failed → sending, attempts + 1, atomically.

        ``None`` when the job is in any other state, when a failed job's
        backoff has not passed yet, or when ``attempt`` (what the queue message
        was published for) is not the next attempt: that is how a duplicate or
        stale queue message is recognised and dropped.
        """
        now = _now(now)
        conditions = [
            jobs.c.id == job_id,
            or_(
                jobs.c.state == JobState.PENDING.value,
                and_(
                    jobs.c.state == JobState.FAILED.value,
                    or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now),
                ),
            ),
        ]
        if attempt is not None:
            conditions.append(jobs.c.attempts == attempt - 1)
        try:
            with writing(self.engine) as conn:
                before = conn.execute(select(jobs.c.state).where(*conditions)).scalar()
                if before is None:
                    return None
                row = conn.execute(
                    update(jobs)
                    .where(*conditions)
                    .values(
                        state=JobState.SENDING.value,
                        attempts=jobs.c.attempts + 1,
                        next_attempt_at=None,
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                ).one_or_none()
                if row is None:  # another worker won the race (PostgreSQL)
                    return None
                job = _job(row)
                _record(
                    conn,
                    job_id,
                    at=now,
                    from_state=JobState(before),
                    to_state=JobState.SENDING,
                    attempt=job.attempts,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim job {job_id}: {exc}") from exc
        assert JobState(before) in CLAIMABLE
        return job

    def finish(
        self,
        job_id: int,
        to_state: JobState | Sequence[JobState],
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Job:
        """Move a job on, through one state or a path of states in one transaction.

        Raises :class:`broker.model.jobs.JobStateError` if a step is not allowed
        (for example when an operator cancelled the job meanwhile).
        """
        path = [JobState(to_state)] if isinstance(to_state, str) else list(to_state)
        return self._move(job_id, path, error=error, next_attempt_at=next_attempt_at, now=now)

    def retry(self, job_id: int, *, now: datetime | None = None) -> Job:
        """Operator: start a dead or failed job over (pending, attempts reset)."""
        job = self.get(job_id)
        if job.state not in RETRYABLE:
            valid = " or ".join(sorted(RETRYABLE))
            raise JobStateError(f"job {job_id} is {job.state}; only a {valid} job can be retried")
        # next_attempt_at marks it for the service's dispatcher to publish (the
        # operator's command may run in another process than the bus).
        now = _now(now)
        return self._move(job_id, [JobState.PENDING], reset=True, next_attempt_at=now, now=now)

    def resend(
        self,
        job_id: int,
        *,
        study_revision: int,
        series_uids: Sequence[str],
        now: datetime | None = None,
    ) -> Job:
        """Send a job again for an updated study (its route resends updates)."""
        job = self.get(job_id)
        if job.state not in RESENDABLE:
            valid = ", ".join(sorted(RESENDABLE))
            raise JobStateError(f"job {job_id} is {job.state}; only a job in {valid} is resent")
        now = _now(now)
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        study_revision=study_revision, series_uids=json.dumps(list(series_uids))
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update job {job_id}: {exc}") from exc
        return self._move(
            job_id,
            [JobState.PENDING],
            reset=True,
            error=f"study updated (revision {study_revision}); sent again",
            next_attempt_at=now,
            now=now,
        )

    def take_released(self, now: datetime | None = None, limit: int = 500) -> list[Job]:
        """Pending jobs an operator released (``retry``), unmarked as they are taken."""
        now = _now(now)
        try:
            with writing(self.engine) as conn:
                rows = _update_batch(
                    conn,
                    JobState.PENDING,
                    and_(jobs.c.next_attempt_at.is_not(None), jobs.c.next_attempt_at <= now),
                    {"next_attempt_at": None},
                    limit,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take released jobs: {exc}") from exc
        return [_job(r) for r in rows]

    def cancel(self, job_id: int, *, reason: str = "cancelled", now: datetime | None = None) -> Job:
        """Cancel a job that is not finished; the reason goes into its history."""
        return self._move(job_id, [JobState.CANCELLED], error=reason, now=now)

    def requeue_due(self, now: datetime | None = None, limit: int = 500) -> list[Job]:
        """Failed jobs whose backoff has passed, moved back to pending (to be published)."""
        now = _now(now)
        moved: list[Job] = []
        try:
            with writing(self.engine) as conn:
                rows = _update_batch(
                    conn,
                    JobState.FAILED,
                    or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now),
                    {"state": JobState.PENDING.value, "updated_at": now, "next_attempt_at": None},
                    limit,
                )
                for row in rows:
                    job = _job(row)
                    _record(
                        conn,
                        job.id,
                        at=now,
                        from_state=JobState.FAILED,
                        to_state=JobState.PENDING,
                        attempt=job.attempts,
                    )
                    moved.append(job)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot requeue failed jobs: {exc}") from exc
        return sorted(moved, key=lambda j: j.id)

    def recover_interrupted(
        self, *, before: datetime | None = None, now: datetime | None = None
    ) -> list[Job]:
        """Jobs left in ``sending`` by a crash: the attempt counts; failed, or dead if last.

        Only jobs whose attempt started before ``before`` (default: now) are
        touched. With several worker processes, pass a time older than the
        longest send, or run this only when no other worker is alive.
        """
        now = _now(now)
        before = before or now
        recovered: list[Job] = []
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.state == JobState.SENDING.value, jobs.c.updated_at <= before
                )
            ).all()
        for (job_id,) in rows:
            job = self.get(job_id)
            to = JobState.DEAD if job.exhausted else JobState.FAILED
            try:
                recovered.append(
                    self._move(
                        job_id,
                        [to],
                        error="interrupted while sending (process stopped)",
                        next_attempt_at=now if to is JobState.FAILED else None,
                        expect=JobState.SENDING,
                        now=now,
                    )
                )
            except JobChangedError:
                continue
        return recovered

    def _move(
        self,
        job_id: int,
        path: Sequence[JobState],
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        reset: bool = False,
        expect: JobState | None = None,
        now: datetime | None = None,
    ) -> Job:
        now = _now(now)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
                if row is None:
                    raise NotFoundError(f"no job with id {job_id}")
                current = JobState(row.state)
                if expect is not None and current is not expect:
                    raise JobChangedError(f"job {job_id} is {current} now, no longer {expect}")
                attempts = 0 if reset else row.attempts
                state = current
                for step in path:
                    check_transition(state, step)
                    _record(
                        conn,
                        job_id,
                        at=now,
                        from_state=state,
                        to_state=step,
                        attempt=attempts,
                        error=error,
                    )
                    state = step
                values: dict[str, Any] = {
                    "state": state.value,
                    "updated_at": now,
                    "next_attempt_at": next_attempt_at,
                }
                if error is not None or reset:
                    values["last_error"] = _error(error)
                if reset:
                    values["attempts"] = 0
                updated = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == current.value)
                    .values(values)
                    .returning(*jobs.c)
                ).one_or_none()
                if updated is None:  # PostgreSQL: another process moved it meanwhile
                    raise JobChangedError(f"job {job_id} changed state while it was updated")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update job {job_id}: {exc}") from exc
        return _job(updated)

    # ---------------------------------------------------------------- reads
    # (``list`` comes last: defined earlier, its name would shadow the type in annotations)

    def get(self, job_id: int) -> Job:
        """One job by id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no job with id {job_id}")
        return _job(row)

    def find(self, study_uid: str, vendor: str) -> Job | None:
        """The job of a study for a vendor, if there is one."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.study_uid == study_uid, jobs.c.vendor == vendor)
            ).one_or_none()
        return None if row is None else _job(row)

    def due_retries(self, now: datetime | None = None) -> list[Job]:
        """Failed jobs whose backoff has passed (read only; ``requeue_due`` moves them)."""
        now = _now(now)
        stmt = (
            select(jobs)
            .where(
                jobs.c.state == JobState.FAILED.value,
                or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now),
            )
            .order_by(jobs.c.next_attempt_at, jobs.c.id)
        )
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt).all()]

    def next_retry_at(self) -> datetime | None:
        """When the next failed job's backoff ends, if any job is failed."""
        stmt = select(func.min(jobs.c.next_attempt_at)).where(jobs.c.state == JobState.FAILED.value)
        with self.engine.connect() as conn:
            value: datetime | None = conn.execute(stmt).scalar_one_or_none()
        return value

    def unfinished(self) -> list[Job]:
        """Jobs that still need the bus (pending, sending, failed), oldest first."""
        return self.list(state=UNFINISHED, limit=1_000_000)

    def history(self, job_id: int) -> list[JobEvent]:
        """Every transition of a job, oldest first."""
        stmt = select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
        with self.engine.connect() as conn:
            return [_event(r) for r in conn.execute(stmt).all()]

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
        stmt = select(jobs).order_by(jobs.c.id).limit(limit).offset(offset)
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            stmt = stmt.where(jobs.c.state.in_([JobState(s).value for s in states]))
        if vendor is not None:
            stmt = stmt.where(jobs.c.vendor == vendor)
        if study_uid is not None:
            stmt = stmt.where(jobs.c.study_uid == study_uid)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt).all()]


def _update_batch(
    conn: Connection, state: JobState, condition: Any, values: dict[str, Any], limit: int
) -> Sequence[Row[Any]]:
    """Update up to ``limit`` jobs in ``state`` that meet ``condition``; their rows after."""
    chosen = (
        select(jobs.c.id).where(jobs.c.state == state.value, condition).limit(limit)
    ).scalar_subquery()
    return conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(chosen), jobs.c.state == state.value)
        .values(values)
        .returning(*jobs.c)
    ).all()


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
    found = conn.execute(
        select(jobs.c.id, jobs.c.state, jobs.c.attempts).where(
            jobs.c.study_uid.in_(list(study_uids)),
            jobs.c.state.in_([s.value for s in CANCELLED_WITH_ORDER]),
        )
    ).all()
    cancelled = 0
    for row in found:
        moved = conn.execute(
            update(jobs)
            .where(jobs.c.id == row.id, jobs.c.state == row.state)
            .values(state=JobState.CANCELLED.value, updated_at=now, last_error=_error(reason))
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
            cancelled += 1
    return cancelled
