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

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import NotFoundError, StoreError
from broker.store.engine import writing
from broker.store.work_claims import (
    LEASE_SECONDS,
    MAX_ERROR,
    E,
    I,
    S,
    WorkClaims,
    WorkKind,
    clip,
    utc,
)

__all__ = [
    "LEASE_SECONDS",
    "MAX_ERROR",
    "WorkKind",
    "WorkStore",
    "clip",
    "lane_outcomes",
    "lane_retries",
    "utc",
]


def lane_outcomes(
    conn: Connection, kind: WorkKind[Any, Any, Any], outcomes: Sequence[str], since: datetime
) -> dict[str, dict[str, int]]:
    """Per lane (vendor, target): how many steps into each of ``outcomes`` the history has
    since ``since``."""
    items, events = kind.table, kind.events
    lane = items.c[kind.lane]
    found: dict[str, dict[str, int]] = {}
    for name, state, count in conn.execute(
        select(lane, events.c.to_state, func.count())
        .select_from(events.join(items, items.c.id == events.c[kind.event_key]))
        .where(events.c.to_state.in_(outcomes), events.c.at >= since)
        .group_by(lane, events.c.to_state)
    ).all():
        found.setdefault(name, {})[state] = int(count)
    return found


def lane_retries(
    conn: Connection, kind: WorkKind[Any, Any, Any], failed: str
) -> dict[str, datetime]:
    """Per lane: the earliest next attempt of its items in state ``failed`` (the backoff)."""
    items = kind.table
    lane = items.c[kind.lane]
    rows = conn.execute(
        select(lane, func.min(items.c.next_attempt_at))
        .where(items.c.state == failed, items.c.next_attempt_at.is_not(None))
        .group_by(lane)
    ).all()
    return {name: at for name, at in rows if at is not None}


class WorkStore(WorkClaims[I, S, E]):
    """Work items of one kind and their history. Every method is one short transaction."""

    # ---------------------------------------------------------------- history

    def history(self, item_id: int) -> list[E]:
        """Every transition of an item, oldest first."""
        events = self.kind.events
        stmt = select(events).where(events.c[self.kind.event_key] == item_id).order_by(events.c.id)
        with self.engine.connect() as conn:
            return [self.kind.event(r) for r in conn.execute(stmt).all()]

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
        note: str | None = None,
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
            note=note,
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
        note: str | None = None,
        now: datetime | None = None,
    ) -> I:
        """Move an item along ``path`` in one transaction, one history row per step.

        ``expect``: the state it must be in; ``holder``: the worker whose
        claim it must be under; ``reset``: attempts start over (the history
        keeps ``error`` as the reason, the item's last error is cleared);
        ``note``: said in the first step's history row only (not an error).
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
                        error=error or (note if state is current else None),
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
