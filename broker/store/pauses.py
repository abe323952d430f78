"""Operators' pauses of lanes (a vendor under maintenance): its work items wait, unclaimed.

A pause is the lane's row in ``work_lanes`` (``paused_at``, ``paused_until``,
``paused_by``, ``pause_reason``); :meth:`broker.store.work_claims.WorkClaims.claim_next`
claims nothing from a lane while its pause holds, in every worker process. Pausing
and resuming are audited in the transaction that makes the change (``vendor.pause``,
``vendor.resume``). A pause with an end (``until``) ends by itself then; the lanes
look for the waiting items at that end (the service's timer) or within a second (their
own polling), as after a resume.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.model.work import LaneNotPausedError, LanePause
from broker.store.audit import record_in
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import work_lanes
from broker.store.work_claims import WorkKind, utc


def _pause(name: str, r: Row[Any]) -> LanePause:
    return LanePause(
        lane=name, since=r.paused_at, until=r.paused_until, by=r.paused_by, reason=r.pause_reason
    )


class LanePauses:
    """Pause, resume and read the pauses of one kind's lanes (vendors)."""

    def __init__(self, engine: Engine, kind: WorkKind[Any, Any, Any]) -> None:
        self.engine = engine
        self.kind = kind

    def pause(
        self,
        lane: str,
        *,
        actor: str,
        until: datetime | None = None,
        reason: str | None = None,
        peer: str = "",
        now: datetime | None = None,
    ) -> LanePause:
        """Pause ``lane`` from now until ``until`` (None: until resumed); a pause already in
        force is replaced (a new end, a new reason). Audited as ``{lane}.pause``."""
        now = utc(now)
        key = self.kind.lane_key(lane)
        values = {"paused_at": now, "paused_until": until, "paused_by": actor[:160]}
        values["pause_reason"] = reason
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    _insert(self.engine, work_lanes)
                    .values(lane=key)
                    .on_conflict_do_nothing(index_elements=[work_lanes.c.lane])
                )
                conn.execute(update(work_lanes).where(work_lanes.c.lane == key).values(values))
                detail = {"until": until.isoformat() if until else None, "reason": reason}
                record_in(
                    conn, actor, f"{self.kind.lane}.pause", key, detail=detail, peer=peer, now=now
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot pause {self.kind.lane} '{lane}': {exc}") from exc
        return LanePause(lane=lane, since=now, until=until, by=actor, reason=reason)

    def resume(
        self, lane: str, *, actor: str, peer: str = "", now: datetime | None = None
    ) -> LanePause:
        """End the lane's pause now; the pause that ended. :class:`LaneNotPausedError` when
        none holds (never paused, resumed, or its end passed). Audited as ``{lane}.resume``."""
        now = utc(now)
        key = self.kind.lane_key(lane)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(select(work_lanes).where(work_lanes.c.lane == key)).first()
                if row is None or row.paused_at is None or not _pause(lane, row).active(now):
                    raise LaneNotPausedError(
                        f"{self.kind.lane} '{lane}' is not paused; valid: pause it first"
                    )
                conn.execute(
                    update(work_lanes)
                    .where(work_lanes.c.lane == key)
                    .values(paused_at=None, paused_until=None, paused_by=None, pause_reason=None)
                )
                ended = _pause(lane, row)
                detail = {"paused_at": ended.since.isoformat(), "paused_by": ended.by}
                record_in(
                    conn, actor, f"{self.kind.lane}.resume", key, detail=detail, peer=peer, now=now
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot resume {self.kind.lane} '{lane}': {exc}") from exc
        return ended

    def current(self, now: datetime | None = None) -> dict[str, LanePause]:
        """The pauses in force at ``now``, by lane name."""
        now = utc(now)
        prefix = f"{self.kind.lane}:"
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(work_lanes).where(
                    work_lanes.c.lane.startswith(prefix, autoescape=True),
                    work_lanes.c.paused_at.is_not(None),
                )
            ).all()
        found = {r.lane.removeprefix(prefix): r for r in rows}
        pauses = {name: _pause(name, r) for name, r in found.items()}
        return {name: p for name, p in pauses.items() if p.active(now)}

    def next_end(self, now: datetime | None = None) -> datetime | None:
        """When the first pause in force with an end ends (None: none has one)."""
        now = utc(now)
        w = work_lanes
        with self.engine.connect() as conn:
            end: datetime | None = conn.execute(
                select(func.min(w.c.paused_until)).where(
                    w.c.lane.startswith(f"{self.kind.lane}:", autoescape=True),
                    w.c.paused_at.is_not(None),
                    w.c.paused_until > now,
                )
            ).scalar_one_or_none()
        return end
