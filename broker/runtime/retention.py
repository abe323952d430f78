"""Retention in the running service: a task of the engine's timer that purges what
``retention.*`` lets go every ``retention.interval``, and watches the spool's free space
(the alarm is logged when it goes below ``storage.min_free_space`` and when it is back)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from broker.model.logging import get_logger
from broker.store.retention import Cutoffs, Retention
from broker.store.space import SpaceWatch
from broker.store.spool import Spool
from config.schema import Retention as RetentionSettings
from config.schema import Settings

LOG = get_logger("radbridge.retention")
#: The free space is checked this often by the service.
SPACE_SECONDS = 5.0
#: Studies and result objects one timer tick purges at most (the timer's other tasks wait).
PURGE_BATCH = 100


def cutoffs(retention: RetentionSettings, now: datetime) -> Cutoffs:
    """The instants before which each kind goes, from the configured durations."""

    def before(seconds: float | None) -> datetime | None:
        return None if seconds is None else now - timedelta(seconds=seconds)

    return Cutoffs(
        studies_done=before(retention.studies_after_done),
        studies_failed=before(retention.studies_after_failed or retention.studies_after_done),
        results=before(retention.results_after_written_back),
        messages=before(retention.messages),
        job_history=before(retention.job_history),
        orders=before(retention.orders),
        audit=before(None if retention.audit_days is None else retention.audit_days * 86400.0),
    )


def configured(retention: RetentionSettings) -> bool:
    """Whether anything is ever purged."""
    return any(v is not None for k, v in retention.model_dump().items() if k != "interval")


class RetentionTask:
    """The timer's task: the free-space watch every few seconds, a purge every interval."""

    def __init__(self, engine: Engine, spool: Spool, settings: Callable[[], Settings]) -> None:
        self.retention = Retention(engine, spool)
        self.settings = settings
        self.space = SpaceWatch(spool.root, self._min_free_bytes, interval=SPACE_SECONDS)
        self._next: datetime | None = None

    def _min_free_bytes(self, total: int) -> int:
        return self.settings().storage.min_free_bytes(total)

    def __call__(self, now: datetime) -> datetime | None:
        self.space.current()
        retention = self.settings().retention
        if self._next is None or now >= self._next:
            self._next = now + timedelta(seconds=retention.interval)
            if configured(retention):
                done = self.retention.purge(cutoffs(retention, now), now=now, limit=PURGE_BATCH)
                if done.more:  # the rest soon, without holding the timer's other tasks
                    self._next = now + timedelta(seconds=1)
        return min(self._next, now + timedelta(seconds=SPACE_SECONDS))


__all__ = ["RetentionTask", "configured", "cutoffs"]
