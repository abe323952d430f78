"""The job engine's store: work items of every kind, claimed under leases, moved with history.

One :class:`WorkStore` serves vendor jobs (:mod:`broker.store.jobs`) and
write-backs (:mod:`broker.store.deliveries`); a :class:`WorkKind` says which
table, history and lane column it works on. The rules hold for both:

- Every change of state is one write transaction that checks the transition
  against the kind's :class:`~broker.model.work.Machine`, updates the row only
  if it is still in the state that was read, and appends a history row naming
  the configuration snapshot and the worker of the step: the history and the
  item never disagree.
- A claim moves one ``pending`` item of a lane (a vendor, a target) to
  ``sending`` for one worker, under a lease (``claimed_by``, ``lease_until``),
  urgent first, then oldest. With a ``capacity`` (the vendor's concurrency)
  the claim first locks the lane's row in ``work_lanes`` and counts the lane's
  live leases: it succeeds only while fewer than ``capacity`` are held, on
  SQLite and on PostgreSQL alike, whichever process asks.
- The worker renews its leases while its attempts run (:meth:`WorkStore.renew`);
  an attempt's outcome is written only while the worker still holds the claim.
  A lease that ran out is taken over (:meth:`WorkStore.expire_leases`): the
  attempt counts, the item is failed (due at once) or dead if it was the last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, Row, Table, and_, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import NotFoundError, StoreError
from broker.model.work import Machine, WorkItem
from broker.store.engine import writing
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


class WorkStore(Generic[I, S, E]):
    """Work items of one kind and their history. Every method is one short transaction."""

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

    def record(
        self,
        conn: Connection,
        item_id: int,
        *,
        at: datetime,
        from_state: S | None,
        to_state: S,
        attempt: int,
        error: str | None = None,
        snapshot: str | None = None,
        worker: str | None = None,
    ) -> None:
        """Append one history row (inside the caller's transaction)."""
        conn.execute(
            insert(self.kind.events).values(
                {
                    self.kind.event_key: item_id,
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

    def history(self, item_id: int) -> list[E]:
        """Every transition of an item, oldest first."""
        events = self.kind.events
        stmt = select(events).where(events.c[self.kind.event_key] == item_id).order_by(events.c.id)
        with self.engine.connect() as conn:
            return [self.kind.event(r) for r in conn.execute(stmt).all()]

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

        With ``capacity``, only while fewer than ``capacity`` of the lane's
        items hold live leases, counted and claimed under the lane's lock.
        None when nothing is pending or the lane is full.
        """
        now = utc(now)
        t = self._t
        try:
            with writing(self.engine) as conn:
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

    def _lock_lane(self, conn: Connection, lane: str) -> None:
        key = self.kind.lane_key(lane)
        conn.execute(
            _insert(self.engine, work_lanes)
            .values(lane=key)
            .on_conflict_do_nothing(index_elements=[work_lanes.c.lane])
        )
        # PostgreSQL: the row lock serialises the lane's claims across processes;
        # SQLite: the write transaction is already the only one (BEGIN IMMEDIATE).
        conn.execute(select(work_lanes.c.lane).where(work_lanes.c.lane == key).with_for_update())

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

    # ---------------------------------------------------------------- transitions

    def finish(
        self,
        item_id: int,
        to_state: S | Sequence[S],
        *,
        worker: str | None = None,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        snapshot: str | None = None,
        values: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> I:
        """Move an item on, through one state or a path of states in one transaction.

        With ``worker`` it is an attempt's outcome: written only while that
        worker's claim holds (else the kind's ``changed`` error: its lease ran
        out and the item was taken over). Raises the kind's state error if a
        step is not allowed (for example when an operator cancelled it meanwhile).
        """
        path = [self._state(to_state)] if isinstance(to_state, str) else list(to_state)
        return self.move(
            item_id,
            path,
            expect=self._m.sending if worker is not None else None,
            holder=worker,
            error=error,
            next_attempt_at=next_attempt_at,
            snapshot=snapshot,
            values=values,
            now=now,
        )

    def retry(self, item_id: int, *, now: datetime | None = None) -> I:
        """Operator: start a dead or failed item over (pending, attempts reset).

        ``next_attempt_at`` marks it as released, so the running service's
        timer wakes a worker for it (the operator's command may run in
        another process than the engine).
        """
        item = self.get(item_id)
        state = getattr(item, "state")  # noqa: B009 (every kind's items have one)
        if state not in self._m.retryable:
            valid = " or ".join(sorted(self._m.retryable))
            noun = self._m.noun
            raise self._m.error(
                f"{noun} {item_id} is {state}; only a {valid} {noun} can be retried"
            )
        now = utc(now)
        return self.move(
            item_id,
            [self._m.pending],
            reset=True,
            error="retried by the operator",
            next_attempt_at=now,
            now=now,
        )

    def move(
        self,
        item_id: int,
        path: Sequence[S],
        *,
        expect: S | None = None,
        holder: str | None = None,
        reset: bool = False,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
        snapshot: str | None = None,
        values: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> I:
        """Move an item along ``path`` in one transaction, one history row per step.

        ``expect``: the state it must be in; ``holder``: the worker whose
        claim it must be under; ``reset``: attempts start over (the history
        keeps ``error`` as the reason, the item's last error is cleared).
        """
        now = utc(now)
        t, m = self._t, self._m
        try:
            with writing(self.engine) as conn:
                row = conn.execute(select(t).where(t.c.id == item_id)).one_or_none()
                if row is None:
                    raise NotFoundError(f"no {m.noun} with id {item_id}")
                current = self._state(row.state)
                if expect is not None and current is not expect:
                    raise m.changed(f"{m.noun} {item_id} is {current} now, no longer {expect}")
                if holder is not None and row.claimed_by != holder:
                    raise m.changed(
                        f"{m.noun} {item_id} is no longer claimed by worker {holder}: its "
                        f"lease ran out and {row.claimed_by or 'nobody'} holds it now"
                    )
                attempts = 0 if reset else row.attempts
                state = current
                for step in path:
                    m.check(state, step)
                    self.record(
                        conn,
                        item_id,
                        at=now,
                        from_state=state,
                        to_state=step,
                        attempt=attempts,
                        error=error,
                        snapshot=snapshot,
                        worker=holder,
                    )
                    state = step
                changes: dict[str, Any] = {
                    "state": state.value,
                    "updated_at": now,
                    "next_attempt_at": next_attempt_at,
                    **(values or {}),
                }
                if reset:
                    changes["attempts"] = 0
                    changes["last_error"] = None
                elif error is not None:
                    changes["last_error"] = clip(error)
                if state is not m.sending:
                    changes["claimed_by"] = None
                    changes["lease_until"] = None
                conditions = [t.c.id == item_id, t.c.state == current.value]
                if holder is not None:
                    conditions.append(t.c.claimed_by == holder)
                updated = conn.execute(
                    update(t).where(*conditions).values(changes).returning(*t.c)
                ).one_or_none()
                if updated is None:  # PostgreSQL: another process moved it meanwhile
                    raise m.changed(f"{m.noun} {item_id} changed state while it was updated")
                if state is not current:
                    self.entered(conn, updated, state, now)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update {m.noun} {item_id}: {exc}") from exc
        return self.kind.item(updated)

    def entered(self, conn: Connection, row: Row[Any], state: S, now: datetime) -> None:
        """Called in the transaction that moved an item into ``state`` (audit rows, …)."""

    # ---------------------------------------------------------------- the timer's steps

    def requeue_due(
        self,
        now: datetime | None = None,
        *,
        lane: str | None = None,
        snapshot: str | None = None,
        limit: int = 500,
    ) -> list[I]:
        """Failed items whose backoff has passed, moved back to pending (to be claimed)."""
        now = utc(now)
        t, m = self._t, self._m
        due = or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now)
        if lane is not None:
            due = and_(due, t.c[self.kind.lane] == lane)
        try:
            with writing(self.engine) as conn:
                rows = self._update_batch(
                    conn,
                    m.failed,
                    due,
                    {"state": m.pending.value, "updated_at": now, "next_attempt_at": None},
                    limit,
                )
                for row in rows:
                    self.record(
                        conn,
                        row.id,
                        at=now,
                        from_state=m.failed,
                        to_state=m.pending,
                        attempt=row.attempts,
                        snapshot=snapshot,
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot requeue failed {m.noun} rows: {exc}") from exc
        return sorted((self.kind.item(r) for r in rows), key=lambda i: i.id)

    def take_released(self, now: datetime | None = None, limit: int = 500) -> list[I]:
        """Pending items an operator released (``retry``), unmarked as they are taken."""
        now = utc(now)
        t = self._t
        released = and_(t.c.next_attempt_at.is_not(None), t.c.next_attempt_at <= now)
        try:
            with writing(self.engine) as conn:
                rows = self._update_batch(
                    conn, self._m.pending, released, {"next_attempt_at": None}, limit
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take released {self._m.noun} rows: {exc}") from exc
        return [self.kind.item(r) for r in rows]

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

    def _update_batch(
        self,
        conn: Connection,
        state: S,
        condition: Any,
        values: dict[str, Any],
        limit: int,
    ) -> Sequence[Row[Any]]:
        """Update up to ``limit`` items in ``state`` that meet ``condition``; their rows after."""
        t = self._t
        chosen = (
            select(t.c.id).where(t.c.state == state.value, condition).limit(limit)
        ).scalar_subquery()
        return conn.execute(
            update(t)
            .where(t.c.id.in_(chosen), t.c.state == state.value)
            .values(values)
            .returning(*t.c)
        ).all()

    # ---------------------------------------------------------------- reads

    def get(self, item_id: int) -> I:
        """One item by id."""
        t = self._t
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == item_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no {self._m.noun} with id {item_id}")
        return self.kind.item(row)

    def next_wakeup(self) -> datetime | None:
        """When the timer next has work here: the first retry due, or the first lease to end."""
        t, m = self._t, self._m
        with self.engine.connect() as conn:
            retry: datetime | None = conn.execute(
                select(func.min(t.c.next_attempt_at)).where(t.c.state == m.failed.value)
            ).scalar_one_or_none()
            lease: datetime | None = conn.execute(
                select(func.min(t.c.lease_until)).where(t.c.state == m.sending.value)
            ).scalar_one_or_none()
        found = [d for d in (retry, lease) if d is not None]
        return min(found) if found else None

    def select_items(
        self,
        *conditions: Any,
        states: S | Iterable[S] | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[I]:
        """Items, oldest first, in ``states`` and meeting ``conditions``."""
        t = self._t
        stmt = select(t).where(*conditions).order_by(t.c.id).limit(limit).offset(offset)
        if states is not None:
            wanted = [states] if isinstance(states, str) else list(states)
            stmt = stmt.where(t.c.state.in_([self._state(s).value for s in wanted]))
        with self.engine.connect() as conn:
            return [self.kind.item(r) for r in conn.execute(stmt).all()]

    def unfinished(self) -> list[I]:
        """Items that still need a worker (pending, sending, failed), oldest first."""
        return self.select_items(states=self._m.unfinished, limit=1_000_000)
