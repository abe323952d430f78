"""The time ledger of a study, and turnaround over many: door to complete, sent, result,
written back, per route, with percentiles.

A :class:`Stamp` is one moment of a study's path (:class:`StampKind`); the
store gathers them from every table that keeps a time
(:mod:`broker.store.timeline`), and features add their own there. A
:class:`Turnaround` row is one job (study x vendor product) with the times its
study and it passed each step; :func:`summarize` gives each route's count and
p50/p95 of each interval from the study's first instance (the "door").
"""

from __future__ import annotations

import csv
import enum
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime


class StampKind(enum.StrEnum):
    """What happened at a stamp's time."""

    FIRST_INSTANCE = "first_instance"
    LAST_INSTANCE = "last_instance"
    MPPS = "mpps"
    IAN = "ian"
    WAITING = "waiting"
    COMPLETE = "complete"
    ROUTE_SKIPPED = "route_skipped"
    ROUTED = "routed"
    SENT = "sent"
    RESULT_RECEIVED = "result_received"
    WRITTEN_BACK = "written_back"
    NOTIFICATION_SENT = "notification_sent"
    NOTIFICATION_ACKNOWLEDGED = "notification_acknowledged"
    CRITICAL_OPENED = "critical_opened"
    """An urgent result opened a critical-result case (its deadline in the detail)."""
    PRIORS_REQUESTED = "priors_requested"
    """A job asked its route's PACS for the patient's prior studies."""
    PRIORS_FETCHED = "priors_fetched"
    """At least one prior came (how many, in the detail)."""
    PRIORS_SKIPPED = "priors_skipped"
    """None came: none found, or the PACS did not answer in time (why, in the detail)."""
    CRITICAL_ESCALATED = "critical_escalated"
    CRITICAL_OVERDUE = "critical_overdue"


@dataclass(frozen=True, slots=True)
class Stamp:
    """One moment of a study's path. ``subject``: the vendor, target or route it concerns;
    ``reason``: a short code (what completed the study, an MPPS status …)."""

    at: datetime
    kind: str
    subject: str | None = None
    reason: str | None = None
    detail: str | None = None
    job_id: int | None = None


#: The intervals a turnaround report gives, each from the study's first instance.
INTERVALS = ("complete", "sent", "result", "written_back")


@dataclass(frozen=True, slots=True)
class Turnaround:
    """One job's times: its study's first instance (the door), completion (and why), the
    job's creation (routed), the first time it reached its vendor, its first complete
    result, and its last result write-back done."""

    study_uid: str
    route: str
    vendor: str
    priority: str
    state: str
    first_instance: datetime
    complete: datetime | None
    complete_reason: str | None
    routed: datetime
    sent: datetime | None
    result: datetime | None
    written_back: datetime | None

    def seconds(self, interval: str) -> float | None:
        """Seconds from the first instance to ``interval`` (one of :data:`INTERVALS`)."""
        moment: datetime | None = getattr(self, interval)
        if moment is None:
            return None
        return round((moment - self.first_instance).total_seconds(), 3)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile ``p`` (0-100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class IntervalSummary:
    """How many jobs reached a step, and the p50 / p95 / max seconds from the door."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None


@dataclass(frozen=True, slots=True)
class RouteSummary:
    """One route's jobs in the period and their door-to-step times."""

    route: str
    jobs: int
    intervals: dict[str, IntervalSummary]


def summarize(rows: Iterable[Turnaround]) -> list[RouteSummary]:
    """Each route's turnaround, routes in name order."""
    by_route: dict[str, list[Turnaround]] = {}
    for row in rows:
        by_route.setdefault(row.route, []).append(row)
    out = []
    for route in sorted(by_route):
        mine = by_route[route]
        intervals = {}
        for name in INTERVALS:
            values = [v for r in mine if (v := r.seconds(name)) is not None]
            intervals[name] = IntervalSummary(
                count=len(values),
                p50=percentile(values, 50),
                p95=percentile(values, 95),
                max=max(values) if values else None,
            )
        out.append(RouteSummary(route=route, jobs=len(mine), intervals=intervals))
    return out


STAMP_COLUMNS = ("at", "kind", "subject", "reason", "detail", "job_id")
TURNAROUND_COLUMNS = (
    "study_uid",
    "route",
    "vendor",
    "priority",
    "state",
    "first_instance",
    "complete",
    "complete_reason",
    "routed",
    "sent",
    "result",
    "written_back",
    *(f"door_to_{name}_seconds" for name in INTERVALS),
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def stamp_json(stamp: Stamp) -> dict[str, object]:
    """A stamp as JSON (times ISO 8601, UTC)."""
    return {
        "at": _iso(stamp.at),
        "kind": str(stamp.kind),
        "subject": stamp.subject,
        "reason": stamp.reason,
        "detail": stamp.detail,
        "job_id": stamp.job_id,
    }


def turnaround_json(row: Turnaround) -> dict[str, object]:
    """A turnaround row as JSON: its times, and seconds from the door to each step."""
    data: dict[str, object] = {
        "study_uid": row.study_uid,
        "route": row.route,
        "vendor": row.vendor,
        "priority": row.priority,
        "state": row.state,
        "first_instance": _iso(row.first_instance),
        "complete": _iso(row.complete),
        "complete_reason": row.complete_reason,
        "routed": _iso(row.routed),
        "sent": _iso(row.sent),
        "result": _iso(row.result),
        "written_back": _iso(row.written_back),
    }
    for name in INTERVALS:
        data[f"door_to_{name}_seconds"] = row.seconds(name)
    return data


def summary_json(summary: RouteSummary) -> dict[str, object]:
    """A route's summary as JSON: ``door_to_<step>: {count, p50, p95, max}`` in seconds."""
    return {
        "route": summary.route,
        "jobs": summary.jobs,
        **{
            f"door_to_{name}": {"count": s.count, "p50": s.p50, "p95": s.p95, "max": s.max}
            for name, s in summary.intervals.items()
        },
    }


def as_csv(columns: Sequence[str], rows: Iterable[dict[str, object]]) -> str:
    """Rows as CSV with a header row; None is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return buffer.getvalue()
