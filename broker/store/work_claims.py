"""Claims under leases, the job engine's store's base (:class:`WorkClaims`): a worker claims
a lane's next item for a while, renews the lease while its attempt runs, and a claim nobody
renews any more is taken over. :class:`broker.store.work.WorkStore` builds on it; see its
module for the rules."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, Row, Table, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.model.work import Machine, WorkItem
from broker.store.engine import writing
from broker.store.snapshots import config_snapshots
from broker.store.studies import _insert
from broker.store.tables import work_lanes
from broker.store.workers import holder_gone

#: Longest error text kept per event; vendors and targets can answer with whole pages.
MAX_ERROR = 2000
#: How long a claim holds without renewal unless the engine says otherwise.
LEASE_SECONDS = 30.0

I = TypeVar("I", bound=WorkItem)  # noqa: E741 (the item type)
S = TypeVar("S", bound=StrEnum)
E = TypeVar("E")


def utc(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def clip(text: str | None) -> str | None:
    """An error text as the store keeps it (at most :data:`MAX_ERROR` characters)."""
    return None if text is None else text[:MAX_ERROR]


def record_event(
    conn: Connection,
    events: Table,
    item: dict[str, int],
    *,
    at: datetime,
    from_state: StrEnum | None,
    to_state: StrEnum,
    attempt: int,
    error: str | None = None,
    snapshot: str | None = None,
    worker: str | None = None,
) -> None:
    """Append one history row inside the caller's transaction (``item``: its id column).

    A step taken outside an attempt and the timer (an operator's retry or
    cancel, a result received) names the snapshot the service has in force.
    """
    if snapshot is None:
        snapshot = conn.execute(
            select(config_snapshots.c.snapshot).order_by(config_snapshots.c.id.desc()).limit(1)
        ).scalar()
    conn.execute(
        insert(events).values(
            {
                **item,
                "at": at,
                "from_state": from_state.value if from_state else None,
                "to_state": to_state.value,
                "attempt": attempt,
                "error": clip(error),
                "snapshot": snapshot,
                "worker": worker,
            }
        )
    )


def attempt_fields(r: Row[Any]) -> dict[str, Any]:
    """The :class:`~broker.model.work.Attempts` fields of an item's row."""
    return {
        "attempts": r.attempts,
        "max_attempts": r.max_attempts,
        "next_attempt_at": r.next_attempt_at,
        "last_error": r.last_error,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "claimed_by": r.claimed_by,
        "lease_until": r.lease_until,
    }


def event_fields(r: Row[Any], state: Callable[[str], Any]) -> dict[str, Any]:
    """The :class:`~broker.model.work.WorkEvent` fields of a history row."""
    return {
        "at": r.at,
        "from_state": state(r.from_state) if r.from_state else None,
        "to_state": state(r.to_state),
        "attempt": r.attempt,
        "error": r.error,
        "snapshot": r.snapshot,
        "worker": r.worker,
    }


@dataclass(frozen=True, slots=True)
class WorkKind(Generic[I, S, E]):
    """Where one kind of work item lives: its table, its history, its lanes, its claim order."""

    machine: Machine[S]
    table: Table
    events: Table
    event_key: str
    """The history's column naming the item (``job_id``, ``delivery_id``)."""
    lane: str
    """The column naming the item's lane (``vendor``, ``target``)."""
    order: Callable[[Table], Sequence[Any]]
    """The claim order: urgent first, then oldest."""
    item: Callable[[Row[Any]], I]
    event: Callable[[Row[Any]], E]

    def lane_key(self, lane: str) -> str:
        """The lane's row in ``work_lanes`` (``vendor:lungai``)."""
        return f"{self.lane}:{lane}"[:96]


class WorkClaims(Generic[I, S, E]):
    """Items of one kind: their history rows, claims, leases and take-overs."""

    def __init__(self, engine: Engine, kind: WorkKind[I, S, E]) -> None:
        self.engine = engine
        self.kind = kind
        self._postgres = engine.dialect.name == "postgresql"

    @property
    def _t(self) -> Table:
        return self.kind.table

    @property
    def _m(self) -> Machine[S]:
        return self.kind.machine

    def _state(self, value: str) -> S:
        return type(self._m.pending)(value)

    # ---------------------------------------------------------------- history

    def record(self, conn: Connection, item_id: int, **step: Any) -> None:
        """Append one history row of the item (inside the caller's transaction); ``step``: the
        keyword arguments of :func:`record_event` (at, from_state, to_state, attempt, …)."""
        record_event(conn, self.kind.events, {self.kind.event_key: item_id}, **step)

    def entered(self, conn: Connection, row: Row[Any], state: S, now: datetime) -> None:
        """Called in the transaction that moved an item into ``state`` (audit rows, …)."""

    # ---------------------------------------------------------------- claims

    def claim(
        self,
        item_id: int,
        *,
        worker: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        snapshot: str | None = None,
        now: datetime | None = None,
    ) -> I | None:
        """Start an attempt of this item: pending → sending, attempts + 1, under a lease.

        None when the item is not pending (another worker has it, or it is
        failed and waits for its backoff).
        """
        now = utc(now)
        try:
            with writing(self.engine) as conn:
                return self._take(
                    conn,
                    item_id,
                    worker=worker,
                    lease_seconds=lease_seconds,
                    snapshot=snapshot,
                    now=now,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim {self._m.noun} {item_id}: {exc}") from exc

    def claim_next(
        self,
        lane: str,
        *,
        worker: str | None = None,
        capacity: int | None = None,
        lease_seconds: float = LEASE_SECONDS,
        snapshot: str | None = None,
        now: datetime | None = None,
    ) -> I | None:
        """Claim the lane's next pending item (urgent first, then oldest), under a lease.

        None while an operator's pause holds the lane (:mod:`broker.store.pauses`).

        With ``capacity``, only while fewer than ``capacity`` of the lane's
        items hold live leases, counted and claimed under the lane's lock.
        None when nothing is pending or the lane is full.
        """
        now = utc(now)
        t = self._t
        try:
            with writing(self.engine) as conn:
                if self._paused(conn, lane, now):
                    return None
                if capacity is not None:
                    self._lock_lane(conn, lane)
                    if self._live(conn, lane, now) >= capacity:
                        return None
                for _ in range(5):  # an operator may move the chosen one meanwhile
                    pick = (
                        select(t.c.id)
                        .where(t.c[self.kind.lane] == lane, t.c.state == self._m.pending.value)
                        .order_by(*self.kind.order(t))
                        .limit(1)
                    )
                    if self._postgres:
                        pick = pick.with_for_update(skip_locked=True)
                    item_id = conn.execute(pick).scalar()
                    if item_id is None:
                        return None
                    item = self._take(
                        conn,
                        item_id,
                        worker=worker,
                        lease_seconds=lease_seconds,
                        snapshot=snapshot,
                        now=now,
                    )
                    if item is not None:
                        return item
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot claim a {self._m.noun} for {self.kind.lane} '{lane}': {exc}"
            ) from exc
        return None

    def _paused(self, conn: Connection, lane: str, now: datetime) -> bool:
        """Whether an operator's pause holds the lane at ``now`` (its items wait)."""
        w = work_lanes
        found = conn.execute(
            select(w.c.lane).where(
                w.c.lane == self.kind.lane_key(lane),
                w.c.paused_at.is_not(None),
                or_(w.c.paused_until.is_(None), w.c.paused_until > now),
            )
        ).first()
        return found is not None

    def _lock_lane(self, conn: Connection, lane: str) -> None:
        """Lock the lane's row (made the first time) until the transaction ends.

        PostgreSQL: the row lock serialises the lane's claims across processes;
        SQLite: the write transaction is already the only one (BEGIN IMMEDIATE).
        """
        key = self.kind.lane_key(lane)
        lock = select(work_lanes.c.lane).where(work_lanes.c.lane == key).with_for_update()
        if conn.execute(lock).first() is not None:
            return
        conn.execute(
            _insert(self.engine, work_lanes)
            .values(lane=key)
            .on_conflict_do_nothing(index_elements=[work_lanes.c.lane])
        )
        conn.execute(lock)

    def _live(self, conn: Connection, lane: str, now: datetime) -> int:
        t = self._t
        count: int = conn.execute(
            select(func.count()).where(
                t.c[self.kind.lane] == lane,
                t.c.state == self._m.sending.value,
                t.c.lease_until > now,
            )
        ).scalar_one()
        return count

    def live_leases(self, lane: str, *, now: datetime | None = None) -> int:
        """How many of the lane's items hold live leases now."""
        with self.engine.connect() as conn:
            return self._live(conn, lane, utc(now))

    def _take(
        self,
        conn: Connection,
        item_id: int,
        *,
        worker: str | None,
        lease_seconds: float,
        snapshot: str | None,
        now: datetime,
    ) -> I | None:
        t = self._t
        row = conn.execute(
            update(t)
            .where(t.c.id == item_id, t.c.state == self._m.pending.value)
            .values(
                state=self._m.sending.value,
                attempts=t.c.attempts + 1,
                next_attempt_at=None,
                updated_at=now,
                claimed_by=worker,
                lease_until=now + timedelta(seconds=lease_seconds),
            )
            .returning(*t.c)
        ).one_or_none()
        if row is None:
            return None
        item = self.kind.item(row)
        self.record(
            conn,
            item_id,
            at=now,
            from_state=self._m.pending,
            to_state=self._m.sending,
            attempt=item.attempts,
            snapshot=snapshot,
            worker=worker,
        )
        return item

    def renew(
        self,
        worker: str,
        item_ids: Iterable[int],
        *,
        lease_seconds: float = LEASE_SECONDS,
        now: datetime | None = None,
    ) -> set[int]:
        """The heartbeat: extend ``worker``'s leases on these items; the ids it still holds."""
        ids = list(item_ids)
        if not ids:
            return set()
        now = utc(now)
        t = self._t
        try:
            with writing(self.engine) as conn:
                rows = conn.execute(
                    update(t)
                    .where(
                        t.c.id.in_(ids),
                        t.c.state == self._m.sending.value,
                        t.c.claimed_by == worker,
                    )
                    .values(lease_until=now + timedelta(seconds=lease_seconds))
                    .returning(t.c.id)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot renew the leases of worker {worker}: {exc}") from exc
        return {r.id for r in rows}

    # ---------------------------------------------------------------- take-overs

    def expire_leases(
        self,
        now: datetime | None = None,
        *,
        gone: Callable[[str | None], bool] | None = None,
        snapshot: str | None = None,
        limit: int = 500,
    ) -> list[I]:
        """Take over claims nobody holds any more: the attempt counts; failed (due at once),
        or dead if it was the last.

        A claim is taken over when its lease ran out, or, with ``gone``, when
        ``gone(holder)`` says its worker is certainly dead (a start-up takes
        over the claims of its own machine's dead processes at once).
        """
        now = utc(now)
        t, m = self._t, self._m
        expired = or_(t.c.lease_until.is_(None), t.c.lease_until <= now)
        stmt = select(t).where(t.c.state == m.sending.value).order_by(t.c.id).limit(limit)
        if gone is None:
            stmt = stmt.where(expired)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        taken: list[I] = []
        for row in rows:
            lapsed = row.lease_until is None or row.lease_until <= now
            dead_holder = gone is not None and gone(row.claimed_by)
            if not (lapsed or dead_holder):
                continue
            holder = row.claimed_by
            if holder is None:
                why = "interrupted while sending (process stopped)"
            elif dead_holder:
                why = f"interrupted while sending (worker {holder} stopped)"
            else:
                why = f"interrupted while sending: the lease of worker {holder} ran out"
            item = self._take_over(
                row, why, lapsed_only=not dead_holder, snapshot=snapshot, now=now
            )
            if item is not None:
                taken.append(item)
        return taken

    def _take_over(
        self,
        row: Row[Any],
        why: str,
        *,
        lapsed_only: bool,
        snapshot: str | None,
        now: datetime,
    ) -> I | None:
        t, m = self._t, self._m
        to = m.dead if row.attempts >= row.max_attempts else m.failed
        conditions = [
            t.c.id == row.id,
            t.c.state == m.sending.value,
            t.c.claimed_by.is_not_distinct_from(row.claimed_by),
        ]
        if lapsed_only:
            conditions.append(or_(t.c.lease_until.is_(None), t.c.lease_until <= now))
        try:
            with writing(self.engine) as conn:
                updated = conn.execute(
                    update(t)
                    .where(*conditions)
                    .values(
                        state=to.value,
                        updated_at=now,
                        next_attempt_at=now if to is m.failed else None,
                        last_error=clip(why),
                        claimed_by=None,
                        lease_until=None,
                    )
                    .returning(*t.c)
                ).one_or_none()
                if updated is None:  # renewed, finished or taken over meanwhile
                    return None
                self.record(
                    conn,
                    row.id,
                    at=now,
                    from_state=m.sending,
                    to_state=to,
                    attempt=row.attempts,
                    error=why,
                    snapshot=snapshot,
                    worker=row.claimed_by,
                )
                self.entered(conn, updated, to, now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take over {m.noun} {row.id}: {exc}") from exc
        return self.kind.item(updated)

    def recover_interrupted(
        self, *, snapshot: str | None = None, now: datetime | None = None
    ) -> list[I]:
        """After a start: take over every claim whose lease ran out or whose holder is gone
        (no holder, or a process of this machine that no longer runs)."""
        return self.expire_leases(now, gone=holder_gone, snapshot=snapshot, limit=1_000_000)
