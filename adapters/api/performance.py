"""``/api/v1/vendors/{name}/performance``: how an AI product performed on this hospital's
patients, month by month and in total (JSON, or CSV with ``format=csv``); see
:mod:`broker.model.performance` for what each figure means."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel

from adapters.api.deps import State, Viewer, parse_time
from adapters.api.responses import NOT_FOUND, invalid
from broker.model.performance import Stats, by_month, performance_csv, stats
from broker.store.performance import job_records

router = APIRouter(prefix="/vendors", tags=["vendors"])

#: Without ``from``: this many days back.
DEFAULT_DAYS = 365
#: The longest period one answer covers.
MAX_DAYS = 3 * 366


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


class CodeRateOut(BaseModel):
    findings: int
    positives: int
    rate: float | None


class StatsOut(BaseModel):
    studies: int
    results: int
    sent: int
    failure_rate: float | None
    no_answer_rate: float | None
    """Jobs sent that have no result (yet), over jobs sent."""
    turnaround_p50_s: float | None
    turnaround_p95_s: float | None
    positive_rate: dict[str, CodeRateOut]
    """Per finding code (``SCT:1386000``)."""
    verdicts: dict[str, int]
    ppv: float | None
    """From verdicts: (accepted + modified) / judged, of findings called present."""
    reports: dict[str, int]
    """Findings ``confirmed``, ``contradicted``, ``not_mentioned`` by final reports."""
    sensitivity: float | None
    specificity: float | None
    versions: dict[str, int]
    """Results by the product's reported software version."""


class MonthOut(StatsOut):
    month: str


class PerformanceOut(BaseModel):
    vendor: str
    product: str
    start: datetime
    end: datetime
    total: StatsOut
    months: list[MonthOut]


def stats_out(s: Stats) -> StatsOut:
    return StatsOut(
        studies=s.studies,
        results=s.results,
        sent=s.sent,
        failure_rate=s.failure_rate,
        no_answer_rate=s.no_answer_rate,
        turnaround_p50_s=s.turnaround_p50,
        turnaround_p95_s=s.turnaround_p95,
        positive_rate={
            c: CodeRateOut(findings=r.findings, positives=r.positives, rate=r.rate)
            for c, r in s.positive.items()
        },
        verdicts=s.verdicts,
        ppv=s.ppv,
        reports=s.reports,
        sensitivity=s.sensitivity,
        specificity=s.specificity,
        versions=s.versions,
    )


@router.get(
    "/{name}/performance",
    response_model=PerformanceOut,
    summary="How a vendor product performed, by month (JSON, or CSV with format=csv)",
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
def performance(
    name: str,
    *,
    api: State,
    _who: Viewer,
    since: Annotated[
        str | None, Query(alias="from", description="Jobs created at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, Query(alias="to", description="Jobs created before (a date: through it).")
    ] = None,
    fmt: Annotated[Format, Query(alias="format")] = Format.JSON,
) -> PerformanceOut | Response:
    """Studies, results, positive rate per finding code, verdicts and PPV, agreement with
    final reports (sensitivity, specificity where the report decides), turnaround p50/p95,
    failure and no-answer rate, and results by product version; per month (site time) and
    in total. Canary studies are never counted."""
    settings = api.settings
    if name not in settings.vendors:
        valid = ", ".join(sorted(settings.vendors)) or "none configured"
        raise HTTPException(404, f"no vendor '{name}' is configured; valid: {valid}")
    tz = settings.site.timezone
    end = parse_time(until, tz, end=True) or datetime.now(UTC)
    start = parse_time(since, tz) or end - timedelta(days=DEFAULT_DAYS)
    if end <= start:
        raise invalid("to", until, "the period is empty; valid: to after from")
    if end - start > timedelta(days=MAX_DAYS):
        raise invalid("to", until, f"the period is longer than {MAX_DAYS} days; valid: shorter")
    records = job_records(api.engine, name, start, end)
    months = by_month(records, ZoneInfo(tz))
    total = stats(records)
    if fmt is Format.CSV:
        filename = f"performance-{name}-{start.date()}-{end.date()}.csv"
        return Response(
            performance_csv(months, total),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return PerformanceOut(
        vendor=name,
        product=settings.vendors[name].product,
        start=start,
        end=end,
        total=stats_out(total),
        months=[MonthOut(month=m, **stats_out(s).model_dump()) for m, s in months.items()],
    )
