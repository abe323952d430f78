"""Write-back deliveries in the store: create (idempotent), claim, finish, retry, list, history.

Like the job store: every change of state is one write transaction that
checks the transition (:func:`broker.model.writeback.check_transition`), updates the
row only if it is still in the state that was read, and appends a
``delivery_events`` row. Workers claim per target, urgent deliveries first,
then oldest first; a claim is one conditional UPDATE, so several worker
threads or processes never take the same delivery.

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
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import NotFoundError, StoreError
from broker.model.jobs import Job, JobState, JobStateError
from broker.model.writeback import (
    CLAIMABLE,
    RETRYABLE,
    Delivery,
    DeliveryEvent,
    DeliveryKind,
    DeliveryState,
    DeliveryStateError,
    check_transition,
)
from broker.store.audit import SYSTEM, Action, record_in
from broker.store.engine import writing
from broker.store.jobs import MAX_ERROR, JobStore, _job
from broker.store.studies import _insert
from broker.store.tables import deliveries, delivery_events, job_events, jobs, result_objects

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


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _error(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR]


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
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        message_id=r.message_id,
        next_attempt_at=r.next_attempt_at,
        last_error=r.last_error,
        detail=r.detail,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def _record(
    conn: Connection,
    delivery_id: int,
    *,
    at: datetime,
    from_state: DeliveryState | None,
    to_state: DeliveryState,
    attempt: int,
    error: str | None = None,
) -> None:
    conn.execute(
        insert(delivery_events).values(
            delivery_id=delivery_id,
            at=at,
            from_state=from_state.value if from_state else None,
            to_state=to_state.value,
            attempt=attempt,
            error=_error(error),
        )
    )


#: Target types that send the result's DICOM objects (audited by SOP Instance UID).
DICOM_TARGET_TYPES = frozenset({"dicom", "dicomweb"})


def _audit_written(conn: Connection, row: Row[Any], now: datetime) -> None:
    """The ``result.written`` audit row of a result delivery that is done (same transaction)."""
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


def _claimable(now: datetime) -> Any:
    return or_(
        deliveries.c.state == DeliveryState.PENDING.value,
        and_(
            deliveries.c.state == DeliveryState.FAILED.value,
            or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now),
        ),
    )


class DeliveryChangedError(DeliveryStateError):
    """The delivery changed state between reading it and writing it."""


class DeliveryStore:
    """The deliveries table and its history. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---------------------------------------------------------------- create

    def create(self, new: Sequence[NewDelivery], *, now: datetime | None = None) -> list[Delivery]:
        """Make the deliveries (an existing one for the same result, target and kind is kept).

        Returns every delivery asked for, new or existing, in the order given.
        """
        now = _now(now)
        made: list[Delivery] = []
        try:
            with writing(self.engine) as conn:
                for d in new:
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
                            index_elements=[
                                deliveries.c.result_id,
                                deliveries.c.target,
                                deliveries.c.kind,
                            ]
                        )
                    new_id = conn.execute(stmt.returning(deliveries.c.id)).scalar_one_or_none()
                    if new_id is not None:
                        _record(
                            conn,
                            new_id,
                            at=now,
                            from_state=None,
                            to_state=DeliveryState.PENDING,
                            attempt=0,
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
                    made.append(_delivery(row.one()))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create deliveries: {exc}") from exc
        return made

    # ---------------------------------------------------------------- transitions

    def claim_next(self, target: str, *, now: datetime | None = None) -> Delivery | None:
        """Start the next attempt for ``target``: urgent first, then oldest; None if none is due."""
        now = _now(now)
        try:
            with writing(self.engine) as conn:
                for _ in range(5):  # PostgreSQL: another worker may win a row; take the next
                    row = conn.execute(
                        select(deliveries.c.id, deliveries.c.state)
                        .where(deliveries.c.target == target, _claimable(now))
                        .order_by(deliveries.c.urgent.desc(), deliveries.c.id)
                        .limit(1)
                    ).one_or_none()
                    if row is None:
                        return None
                    claimed = conn.execute(
                        update(deliveries)
                        .where(deliveries.c.id == row.id, deliveries.c.state == row.state)
                        .values(
                            state=DeliveryState.SENDING.value,
                            attempts=deliveries.c.attempts + 1,
                            next_attempt_at=None,
                            updated_at=now,
                        )
                        .returning(*deliveries.c)
                    ).one_or_none()
                    if claimed is None:
                        continue
                    delivery = _delivery(claimed)
                    _record(
                        conn,
                        delivery.id,
                        at=now,
                        from_state=DeliveryState(row.state),
                        to_state=DeliveryState.SENDING,
                        attempt=delivery.attempts,
                    )
                    return delivery
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim a delivery for target '{target}': {exc}") from exc
        return None

    def finish(
        self,
        delivery_id: int,
        to_state: DeliveryState,
        *,
        error: str | None = None,
        detail: str | None = None,
        next_attempt_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Delivery:
        """Record an attempt's outcome: done, failed (retried at ``next_attempt_at``) or dead."""
        return self._move(
            delivery_id,
            to_state,
            error=error,
            detail=detail,
            next_attempt_at=next_attempt_at,
            expect=DeliveryState.SENDING,
            now=now,
        )

    def retry(self, delivery_id: int, *, now: datetime | None = None) -> Delivery:
        """Operator: start a dead or failed delivery over (pending, attempts reset).

        A job that went dead because of this write-back goes back to
        ``writing_back``, so that it can still end ``done``.
        """
        delivery = self.get(delivery_id)
        if delivery.state not in RETRYABLE:
            valid = " or ".join(sorted(RETRYABLE))
            raise DeliveryStateError(
                f"delivery {delivery_id} is {delivery.state}; "
                f"only a {valid} delivery can be retried"
            )
        moved = self._move(
            delivery_id,
            DeliveryState.PENDING,
            error="retried by the operator",
            reset=True,
            now=now,
        )
        if moved.job_id is not None and moved.kind is DeliveryKind.RESULT:
            self._revive_job(moved.job_id, now=_now(now))
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

    def recover_interrupted(self, *, now: datetime | None = None) -> list[Delivery]:
        """Deliveries left in ``sending`` by a crash: the attempt counts; failed, or dead if last.

        A failed one is due at once. Run this where no other worker is sending.
        """
        now = _now(now)
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(deliveries.c.id).where(deliveries.c.state == DeliveryState.SENDING.value)
            ).all()
        recovered = []
        for (delivery_id,) in ids:
            delivery = self.get(delivery_id)
            to = DeliveryState.DEAD if delivery.exhausted else DeliveryState.FAILED
            try:
                recovered.append(
                    self._move(
                        delivery_id,
                        to,
                        error="interrupted while sending (process stopped)",
                        next_attempt_at=now if to is DeliveryState.FAILED else None,
                        expect=DeliveryState.SENDING,
                        now=now,
                    )
                )
            except DeliveryChangedError:
                continue
        return recovered

    def _move(
        self,
        delivery_id: int,
        to_state: DeliveryState,
        *,
        error: str | None = None,
        detail: str | None = None,
        next_attempt_at: datetime | None = None,
        reset: bool = False,
        expect: DeliveryState | None = None,
        now: datetime | None = None,
    ) -> Delivery:
        now = _now(now)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(
                    select(deliveries).where(deliveries.c.id == delivery_id)
                ).one_or_none()
                if row is None:
                    raise NotFoundError(f"no delivery with id {delivery_id}")
                current = DeliveryState(row.state)
                if expect is not None and current is not expect:
                    raise DeliveryChangedError(
                        f"delivery {delivery_id} is {current} now, no longer {expect}"
                    )
                check_transition(current, to_state)
                attempts = 0 if reset else row.attempts
                _record(
                    conn,
                    delivery_id,
                    at=now,
                    from_state=current,
                    to_state=to_state,
                    attempt=attempts,
                    error=error,
                )
                values: dict[str, Any] = {
                    "state": to_state.value,
                    "updated_at": now,
                    "next_attempt_at": next_attempt_at,
                    "attempts": attempts,
                }
                if error is not None or reset:
                    values["last_error"] = _error(error)
                if detail is not None:
                    values["detail"] = detail
                updated = conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == delivery_id, deliveries.c.state == current.value)
                    .values(values)
                    .returning(*deliveries.c)
                ).one_or_none()
                if updated is None:
                    raise DeliveryChangedError(
                        f"delivery {delivery_id} changed state while it was updated"
                    )
                if to_state is DeliveryState.DONE and updated.kind == DeliveryKind.RESULT.value:
                    _audit_written(conn, updated, now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update delivery {delivery_id}: {exc}") from exc
        return _delivery(updated)

    # ---------------------------------------------------------------- overdue jobs

    def overdue_jobs(self, *, now: datetime | None = None, limit: int = 1000) -> list[Job]:
        """Jobs still waiting for their result (sent, awaiting_result) past their deadline."""
        now = _now(now)
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
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt).all()]

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
        now = _now(now)
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
                    conn.execute(
                        insert(job_events).values(
                            job_id=job.id,
                            at=now,
                            from_state=job.state.value,
                            to_state=job.state.value,
                            attempt=job.attempts,
                            error=f"overdue: no result by {job.deadline_at:%Y-%m-%d %H:%M:%S} UTC",
                        )
                    )
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot flag job {job.id} overdue: {exc}") from exc
            made = None
            if notify is not None:
                made = self.create(
                    [
                        NewDelivery(
                            study_uid=job.study_uid,
                            target=notify.target,
                            target_type=notify.target_type,
                            kind=DeliveryKind.NOTIFY,
                            max_attempts=notify.max_attempts,
                            job_id=job.id,
                            event="overdue",
                            urgent=True,
                        )
                    ],
                    now=now,
                )[0]
            flagged.append((job, made))
        return flagged

    # ---------------------------------------------------------------- reads

    def get(self, delivery_id: int) -> Delivery:
        """One delivery by id."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(deliveries).where(deliveries.c.id == delivery_id)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no delivery with id {delivery_id}")
        return _delivery(row)

    def for_job(
        self, job_id: int, kind: DeliveryKind | None = DeliveryKind.RESULT
    ) -> list[Delivery]:
        """A job's deliveries (by default only those that write its results back)."""
        return self.list(job_id=job_id, kind=kind, limit=1_000_000)

    def next_due(self, target: str, *, now: datetime | None = None) -> datetime | None:
        """When ``target``'s next delivery is due: now if one is pending, else the first retry."""
        now = _now(now)
        with self.engine.connect() as conn:
            pending = conn.execute(
                select(deliveries.c.id)
                .where(
                    deliveries.c.target == target,
                    deliveries.c.state == DeliveryState.PENDING.value,
                )
                .limit(1)
            ).first()
            if pending is not None:
                return now
            value: datetime | None = conn.execute(
                select(func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.target == target,
                    deliveries.c.state == DeliveryState.FAILED.value,
                )
            ).scalar_one_or_none()
        return value

    def history(self, delivery_id: int) -> list[DeliveryEvent]:
        """Every transition of a delivery, oldest first."""
        stmt = (
            select(delivery_events)
            .where(delivery_events.c.delivery_id == delivery_id)
            .order_by(delivery_events.c.id)
        )
        with self.engine.connect() as conn:
            return [
                DeliveryEvent(
                    delivery_id=r.delivery_id,
                    at=r.at,
                    from_state=DeliveryState(r.from_state) if r.from_state else None,
                    to_state=DeliveryState(r.to_state),
                    attempt=r.attempt,
                    error=r.error,
                )
                for r in conn.execute(stmt).all()
            ]

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
        stmt = select(deliveries).order_by(deliveries.c.id).limit(limit).offset(offset)
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            stmt = stmt.where(deliveries.c.state.in_([DeliveryState(s).value for s in states]))
        if target is not None:
            stmt = stmt.where(deliveries.c.target == target)
        if result_id is not None:
            stmt = stmt.where(deliveries.c.result_id == result_id)
        if job_id is not None:
            stmt = stmt.where(deliveries.c.job_id == job_id)
        if kind is not None:
            stmt = stmt.where(deliveries.c.kind == kind.value)
        with self.engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(stmt).all()]


__all__ = ["CLAIMABLE", "OVERDUE_STATES", "DeliveryChangedError", "DeliveryStore", "NewDelivery"]
