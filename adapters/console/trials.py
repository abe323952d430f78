"""The trials page: how a product did in a period (a silent trial, typically) beside
another product, with the same report as ``radbridge trials report`` and a CSV."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.api.auth import site_scoped
from adapters.console.auth import State, reading
from adapters.console.views import render, translator
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.model.mode import Mode
from broker.model.trials import TrialReport, report_csv
from broker.runtime.trials import trial_report
from broker.store.users import Session

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]
Day = Annotated[str | None, Query(alias="from", max_length=10)]


def _period(since: str | None, until: str | None, today: date) -> tuple[date, date, bool]:
    """From the first of this month to today unless both days are given and valid."""
    try:
        start = date.fromisoformat(since) if since else today.replace(day=1)
        end = date.fromisoformat(until) if until else today
    except ValueError:
        return today.replace(day=1), today, False
    return (start, end, True) if start <= end else (end, start, True)


def _report(
    console: State, who: Session, vendor: str, days: tuple[date, date], against: str | None
) -> TrialReport:
    """The trial report of ``vendor`` in ``days``, of the user's sites' studies."""
    start, end = days
    return trial_report(
        console.engine,
        console.settings,
        vendor,
        start=start,
        end=end,
        against=against or None,
        sites=who.sites,
    )


@router.get("/trials", name="trials")
@site_scoped
def trials(
    *,
    request: Request,
    console: State,
    who: Viewer,
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    against: Annotated[str | None, Query(max_length=64)] = None,
    since: Day = None,
    until: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    """Choose a product (shadow products first) and a period; its report."""
    vendors = sorted(
        console.settings.vendors.items(), key=lambda kv: (kv[1].mode is not Mode.SHADOW, kv[0])
    )
    start, end, valid = _period(since, until, console.today())
    chosen = vendor or (vendors[0][0] if vendors else None)
    report, missing = None, None
    if chosen is not None:
        try:
            report = _report(console, who, chosen, (start, end), against)
        except NotFoundError as exc:
            missing = str(exc)
    _ = translator(request)
    return render(
        request,
        "trials.html",
        {
            "vendors": [(name, v.mode.value) for name, v in vendors],
            "chosen": chosen,
            "against": against or "",
            "start": start,
            "end": end,
            "problem": missing or (None if valid else _("A day is not valid; valid: YYYY-MM-DD.")),
            "report": report,
        },
    )


@router.get("/trials.csv", name="trials_csv")
@site_scoped
def trials_csv(
    *,
    console: State,
    who: Viewer,
    vendor: Annotated[str, Query(min_length=1, max_length=64)],
    against: Annotated[str | None, Query(max_length=64)] = None,
    since: Day = None,
    until: Annotated[str | None, Query(alias="to", max_length=10)] = None,
) -> Response:
    """The report as CSV (one row per finding code compared)."""
    start, end, _valid = _period(since, until, console.today())
    try:
        report = _report(console, who, vendor, (start, end), against)
    except NotFoundError as exc:
        return Response(str(exc), status_code=404, media_type="text/plain; charset=utf-8")
    return Response(
        report_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="trial-{vendor}-{start}-{end}.csv"'},
    )
