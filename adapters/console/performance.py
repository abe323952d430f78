"""How a vendor product performed, for people who would rather look than read:
``/console/vendors/NAME/performance`` (``?compare=OTHER`` puts another vendor beside it)
with the figures per month, the turnaround distribution and the positive rate per month
drawn as server-side SVG, drift alerts marked; ``performance.csv`` is the same as the
API's CSV."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.console.auth import State, reading
from adapters.console.charts import histogram, lines
from adapters.console.views import render, translator
from broker.model.domain import Role
from broker.model.performance import Stats, by_month, performance_csv, stats
from broker.store.alerts import AlertStore
from broker.store.performance import job_records
from broker.store.users import Session

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]
#: The period the page shows unless told: the last year.
DEFAULT_DAYS = 365
Month = Annotated[str | None, Query(max_length=7, pattern=r"^\d{4}-\d{2}$")]


def _period(console: State, since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """``from``/``to`` months (``2024-05``) in site time; default the last year."""
    tz = console.tz
    now = datetime.now(UTC)
    end = now
    if until:
        year, month = map(int, until.split("-"))
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
        end = min(following.astimezone(UTC), now + timedelta(days=1))
    start = end - timedelta(days=DEFAULT_DAYS)
    if since:
        year, month = map(int, since.split("-"))
        start = datetime(year, month, 1, tzinfo=tz).astimezone(UTC)
    return start, max(end, start + timedelta(days=1))


@dataclass(frozen=True, slots=True)
class Figures:
    name: str
    total: Stats
    months: dict[str, Stats]


def _figures(console: State, name: str, start: datetime, end: datetime) -> Figures:
    records = job_records(console.engine, name, start, end)
    return Figures(name, stats(records), by_month(records, console.tz))


@router.get("/vendors/{name}/performance", name="vendor_performance")
def performance(
    request: Request,
    name: str,
    console: State,
    who: Viewer,
    *,
    since: Annotated[Month, Query(alias="from")] = None,
    until: Annotated[Month, Query(alias="to")] = None,
    compare: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The vendor's figures per month and in total, charts, and another vendor beside it."""
    _ = translator(request)
    vendors = console.settings.vendors
    if name not in vendors:
        valid = ", ".join(sorted(vendors)) or "none configured"
        message = f"no vendor '{name}' is configured; valid: {valid}"
        context = {"title": _("Not found"), "message": message}
        return render(request, "error.html", context, status=404)
    start, end = _period(console, since, until)
    shown = [_figures(console, name, start, end)]
    if compare and compare in vendors and compare != name:
        shown.append(_figures(console, compare, start, end))
    months = sorted({m for f in shown for m in f.months})
    rates: dict[str, dict[str, float | None]] = {}
    for f in shown:
        for m, s in f.months.items():
            for code, rate in s.positive.items():
                rates.setdefault(f"{f.name} {code}", {})[m] = rate.rate
    alerts = AlertStore(console.engine).marks([f.name for f in shown], start, end, console.tz)
    return render(
        request,
        "performance.html",
        {
            "vendor": name,
            "product": vendors[name].product,
            "shown": shown,
            "compare": compare or "",
            "others": sorted(v for v in vendors if v != name),
            "since": since or "",
            "until": until or "",
            "start": start,
            "end": end,
            "turnaround": [(f.name, histogram(f.total.turnarounds)) for f in shown],
            "positive": lines(months, rates, alerts),
        },
    )


@router.get("/vendors/{name}/performance.csv", name="vendor_performance_csv")
def performance_csv_page(
    request: Request,
    name: str,
    console: State,
    who: Viewer,
    *,
    since: Annotated[Month, Query(alias="from")] = None,
    until: Annotated[Month, Query(alias="to")] = None,
) -> Response:
    """The figures per month and in total as CSV (as ``GET /api/v1/vendors/NAME/performance``)."""
    if name not in console.settings.vendors:
        return Response("no such vendor", status_code=404, media_type="text/plain")
    start, end = _period(console, since, until)
    records = job_records(console.engine, name, start, end)
    return Response(
        performance_csv(by_month(records, console.tz), stats(records)),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="performance-{name}.csv"',
        },
    )
