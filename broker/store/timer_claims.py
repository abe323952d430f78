"""Timer claims: one node at a time does a timer's timed actions.

Several nodes (``radbridge serve`` with ``node.id``) share one store. Their
work items are claimed one by one (:mod:`broker.store.work_claims`), but a
timer's tick (judging quiet studies, completing due results, escalations,
retention, the vendor watch) must not run on two nodes at once. Each such
timer has a row in ``timer_claims``: the node whose timer holds it renews it
(``until``) while it runs; another node's timer takes it once ``until`` has
passed (the holder died or lost the store), and a node that stops gives it up.
Taking and renewing are one conditional upsert, so two nodes never both hold.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import timer_claims


class TimerClaims:
    """The ``timer_claims`` rows: who does each timer's timed actions, until when."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def hold(self, timer: str, holder: str, now: datetime, lease: timedelta) -> bool:
        """Take or renew ``timer``'s claim for ``holder`` until ``now + lease``; False while
        another holder's claim runs."""
        t = timer_claims
        until = now + lease
        stmt = _insert(self.engine, t).values(timer=timer, holder=holder, until=until)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.timer],
            set_={"holder": holder, "until": until},
            where=or_(t.c.holder == holder, t.c.until <= now),
        ).returning(t.c.timer)
        try:
            with writing(self.engine) as conn:
                return conn.execute(stmt).first() is not None
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim the {timer} timer: {exc}") from exc

    def release(self, timer: str, holder: str, now: datetime) -> None:
        """Give ``timer``'s claim up (the node stops): another node may take it at once."""
        t = timer_claims
        stmt = update(t).where(t.c.timer == timer, t.c.holder == holder).values(until=now)
        try:
            with writing(self.engine) as conn:
                conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot give up the {timer} timer: {exc}") from exc

    def holders(self) -> dict[str, tuple[str, datetime]]:
        """Each claimed timer's holder and until when its claim holds."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(timer_claims)).all()
        return {r.timer: (r.holder, r.until) for r in rows}


__all__ = ["TimerClaims"]
