"""What the dashboard shows of trouble: vendors' and write-back targets' failures and next
retries, and the urgent results of the last day.

A vendor or target is **down** when its attempts in the window all failed (none
went through) or it holds dead items; **degraded** when some failed and some
went through. The next retry is the earliest ``next_attempt_at`` of its failed
items (the job engine's backoff).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from broker.model.jobs import JobState
from broker.model.writeback import DeliveryState
from broker.store.deliveries import DELIVERIES
from broker.store.jobs import JOBS
from broker.store.studies import of_sites
from broker.store.tables import deliveries, delivery_events, results
from broker.store.work import lane_outcomes, lane_retries


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """A write-back target's deliveries: in the window, dead, and when the next retry is."""

    target: str
    target_type: str
    done_window: int
    failures_window: int
    failed: int
    dead: int
    next_retry_at: datetime | None
    last_done_at: datetime | None

    @property
    def status(self) -> str:
        """``down``, ``degraded``, ``ok`` or ``idle`` (as a vendor's on the dashboard)."""
        return health_status(self.done_window, self.failures_window, self.dead)


@dataclass(frozen=True, slots=True)
class UrgentResult:
    id: int
    job_id: int | None
    study_uid: str
    vendor: str | None
    created_at: datetime


def health_status(succeeded: int, failures: int, dead: int) -> str:
    """``down``: failures (or dead items) and nothing went through; ``degraded``: both."""
    if (failures or dead) and not succeeded:
        return "down"
    if failures:
        return "degraded"
    return "ok" if succeeded else "idle"


def next_job_retries(engine: Engine) -> dict[str, datetime]:
    """Per vendor, the earliest next attempt of its failed jobs."""
    with engine.connect() as conn:
        return lane_retries(conn, JOBS, JobState.FAILED.value)


def target_health(engine: Engine, since: datetime) -> list[TargetHealth]:
    """Every write-back target that has deliveries, by name."""
    d, e = deliveries, delivery_events
    outcomes = (DeliveryState.DONE.value, DeliveryState.FAILED.value, DeliveryState.DEAD.value)
    with engine.connect() as conn:
        states: dict[tuple[str, str], dict[str, int]] = {}
        for target, kind, state, count in conn.execute(
            select(d.c.target, d.c.target_type, d.c.state, func.count()).group_by(
                d.c.target, d.c.target_type, d.c.state
            )
        ).all():
            states.setdefault((target, kind), {})[state] = int(count)
        window = lane_outcomes(conn, DELIVERIES, outcomes, since)
        retries = lane_retries(conn, DELIVERIES, DeliveryState.FAILED.value)
        last_done = dict(
            conn.execute(
                select(d.c.target, func.max(e.c.at))
                .select_from(e.join(d, d.c.id == e.c.delivery_id))
                .where(e.c.to_state == DeliveryState.DONE.value)
                .group_by(d.c.target)
            ).all()
        )
    out = []
    for (target, kind), by_state in sorted(states.items()):
        counts = window.get(target, {})
        out.append(
            TargetHealth(
                target=target,
                target_type=kind,
                done_window=counts.get(DeliveryState.DONE.value, 0),
                failures_window=counts.get(DeliveryState.FAILED.value, 0)
                + counts.get(DeliveryState.DEAD.value, 0),
                failed=by_state.get(DeliveryState.FAILED.value, 0),
                dead=by_state.get(DeliveryState.DEAD.value, 0),
                next_retry_at=retries.get(target),
                last_done_at=last_done.get(target),
            )
        )
    return out


def urgent_results(
    engine: Engine, since: datetime, limit: int = 50, sites: frozenset[str] | None = None
) -> list[UrgentResult]:
    """Results flagged urgent received since ``since``, newest first (only ``sites``'
    studies' when given)."""
    r = results
    stmt = (
        select(r.c.id, r.c.job_id, r.c.study_uid, r.c.vendor, r.c.created_at)
        .where(r.c.urgent.is_(True), r.c.created_at >= since)
        .order_by(r.c.id.desc())
        .limit(limit)
    )
    if sites is not None:
        stmt = stmt.where(r.c.study_uid.in_(of_sites(sites)))
    with engine.connect() as conn:
        return [UrgentResult(*row) for row in conn.execute(stmt).all()]
