"""Canary runs in the store (``canary_runs``, :mod:`broker.model.canary`).

The timer of every ``radbridge serve`` process claims the period's run of a vendor by
inserting its row: the row is unique per vendor and period, so of several processes one
makes the canary and the others find it made. Each change of state is a conditional
update, so one process decides a run's outcome (and raises its alert) once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, and_, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.canary import OPEN_STATES, CanaryRun, CanaryState
from broker.model.domain import ResultState
from broker.model.errors import NotFoundError, StoreError
from broker.store.engine import writing
from broker.store.studies import _insert
from broker.store.tables import canary_runs, results
from broker.store.work_claims import utc


def _run(r: Row[Any]) -> CanaryRun:
    return CanaryRun(
        id=r.id,
        vendor=r.vendor,
        period=r.period,
        actor=r.actor,
        study_uid=r.study_uid,
        job_id=r.job_id,
        state=CanaryState(r.state),
        started_at=r.started_at,
        deadline_at=r.deadline_at,
        finished_at=r.finished_at,
        error=r.error,
    )


class CanaryStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(
        self, vendor: str, period: str, *, actor: str, deadline_at: datetime, now: datetime
    ) -> CanaryRun | None:
        """The new run of ``vendor`` for ``period`` (``making``); None when that period's run
        exists already (another process, or an earlier tick, made it)."""
        c = canary_runs
        values = {
            "vendor": vendor,
            "period": period,
            "actor": actor,
            "state": CanaryState.MAKING.value,
            "started_at": utc(now),
            "deadline_at": utc(deadline_at),
        }
        stmt = (
            _insert(self.engine, c)
            .values(values)
            .on_conflict_do_nothing(index_elements=[c.c.vendor, c.c.period])
            .returning(c.c.id)
        )
        try:
            with writing(self.engine) as conn:
                new_id = conn.execute(stmt).scalar_one_or_none()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim the canary of {vendor}: {exc}") from exc
        return None if new_id is None else self.get(new_id)

    def made(self, run_id: int, study_uid: str, job_id: int) -> None:
        """The run's study is in the store and its job is out: ``waiting``."""
        self._set(
            run_id,
            (CanaryState.MAKING,),
            state=CanaryState.WAITING.value,
            study_uid=study_uid,
            job_id=job_id,
        )

    def finish(
        self, run_id: int, state: CanaryState, *, now: datetime, error: str | None = None
    ) -> bool:
        """``passed`` or ``failed``, if the run is still open; whether this call decided it."""
        return self._set(
            run_id, tuple(OPEN_STATES), state=state.value, finished_at=utc(now), error=error
        )

    def _set(self, run_id: int, states: tuple[CanaryState, ...], **values: Any) -> bool:
        c = canary_runs
        try:
            with writing(self.engine) as conn:
                changed = conn.execute(
                    update(c)
                    .where(c.c.id == run_id, c.c.state.in_([s.value for s in states]))
                    .values(**values)
                    .returning(c.c.id)
                ).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record canary run {run_id}: {exc}") from exc
        return changed is not None

    def get(self, run_id: int) -> CanaryRun:
        with self.engine.connect() as conn:
            row = conn.execute(select(canary_runs).where(canary_runs.c.id == run_id)).first()
        if row is None:
            raise NotFoundError(f"no canary run {run_id}")
        return _run(row)

    def open(self) -> list[CanaryRun]:
        """Runs still ``making`` or ``waiting``, oldest first."""
        c = canary_runs
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(c).where(c.c.state.in_([s.value for s in OPEN_STATES])).order_by(c.c.id)
            ).all()
        return [_run(r) for r in rows]

    def list(self, *, vendor: str | None = None, limit: int = 100) -> list[CanaryRun]:
        """Newest first."""
        c = canary_runs
        stmt = select(c).order_by(c.c.id.desc()).limit(limit)
        if vendor is not None:
            stmt = stmt.where(c.c.vendor == vendor)
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(stmt).all()]

    def answered_at(self, run: CanaryRun) -> datetime | None:
        """When the first complete result of the run's job came; None: none yet."""
        if run.job_id is None:
            return None
        r = results
        with self.engine.connect() as conn:
            found: datetime | None = conn.execute(
                select(func.min(r.c.completed_at)).where(
                    and_(r.c.job_id == run.job_id, r.c.state == ResultState.COMPLETE.value)
                )
            ).scalar()
        return found
