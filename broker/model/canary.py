"""Canaries: a periodic synthetic study per vendor that tests the whole loop. Pure: no I/O.

A **canary run** is one synthetic study sent to one vendor (a job of the route
:data:`CANARY_ROUTE`): ``making`` (its study is being written), ``waiting`` (its job is
out), then ``passed`` (a result came within its deadline) or ``failed`` (none did, or the
study could not be made). A failed run raises ``canary_failed``; a passed one clears it.
Canary jobs are never written back, never billed and never counted in performance, drift
or missing-results figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.model.domain import CodedValue

#: The route of canary jobs: synthetic studies that test the loop, never counted.
CANARY_ROUTE = "(canary)"


class CanaryState(CodedValue):
    MAKING = "making"
    WAITING = "waiting"
    PASSED = "passed"
    FAILED = "failed"


#: States a run is still open in: the timer looks at it again.
OPEN_STATES = frozenset({CanaryState.MAKING, CanaryState.WAITING})


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryRun:
    id: int
    vendor: str
    period: str
    """What made it: the timer's period (``every 21600s #N``), or ``now …`` for one run now."""
    actor: str
    study_uid: str | None
    job_id: int | None
    state: CanaryState
    started_at: datetime
    deadline_at: datetime
    finished_at: datetime | None
    error: str | None
