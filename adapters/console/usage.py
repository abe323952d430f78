"""Usage of a month per vendor product (for settlement), with CSV downloads."""

from __future__ import annotations

import calendar
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.api.auth import site_scoped
from adapters.console.auth import State, reading
from adapters.console.views import render, translator
from broker.model.domain import Role
from broker.runtime.contracts import contract_statuses
from broker.store.contracts import ContractStore
from broker.store.usage import UsageLine, report_csv
from broker.store.users import Session

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]


def _month(
    value: str | None, today: date, _: Callable[[str], str] = str
) -> tuple[date, date, str | None]:
    """The first and last day of ``YYYY-MM`` (this month by default)."""
    first = today.replace(day=1)
    problem = None
    if value:
        try:
            year, month = (int(part) for part in value.split("-"))
            first = date(year, month, 1)
        except ValueError:
            problem = _(
                "{value} is not a month; valid: YYYY-MM, e.g. 2024-05. Showing this month."
            ).format(value=repr(value))
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return first, last, problem


def per_vendor(lines: list[UsageLine], month: str) -> list[UsageLine]:
    """The month's lines summed per vendor, product, site, unit, currency and contract (with
    its payer, price code and province); day: the month."""
    totals: dict[tuple[str, ...], UsageLine] = {}
    for line in lines:
        terms = (line.contract, line.payer, line.price_code, line.province)
        key: tuple[str, ...] = (line.vendor, line.product, line.site, line.unit)
        key += (line.currency or "", *(t or "" for t in terms))
        total = totals.setdefault(
            key,
            UsageLine(
                vendor=line.vendor,
                product=line.product,
                site=line.site,
                day=month,
                unit=line.unit,
                currency=line.currency,
                contract=line.contract,
                payer=line.payer,
                price_code=line.price_code,
                province=line.province,
                amount=Decimal(0),
            ),
        )
        total.studies += line.studies
        total.quantity += line.quantity
        total.billable += line.billable
        total.trial += line.trial
        total.unbillable += line.unbillable
        total.package += line.package
        total.amount += line.amount
    return [totals[k] for k in sorted(totals)]


@router.get("/usage", name="usage")
@site_scoped
def usage(
    request: Request,
    console: State,
    who: Viewer,
    month: Annotated[str | None, Query(max_length=7)] = None,
) -> Response:
    """The month's deliveries per vendor product: studies, billable, trial, package, amount;
    the contracts with their use and the day each package runs out (a vendor's ``billing:``
    trial quota is its contract, as in ``GET /api/v1/contracts``)."""
    first, last, problem = _month(month, console.today(), translator(request))
    lines = console.usage.report(first, last, sites=who.sites)
    label = f"{first:%Y-%m}"
    contracts = contract_statuses(
        console.settings, ContractStore(console.engine), datetime.now(UTC), who.sites
    )
    return render(
        request,
        "usage.html",
        {
            "contracts": contracts,
            "month": label,
            "first": first,
            "last": last,
            "problem": problem,
            "totals": per_vendor(lines, label),
            "days": lines,
        },
    )


@router.get("/usage.csv", name="usage_csv")
@site_scoped
def usage_csv(
    request: Request,
    console: State,
    who: Viewer,
    month: Annotated[str | None, Query(max_length=7)] = None,
    by: Annotated[str, Query(pattern="^(vendor|day)$")] = "vendor",
) -> Response:
    """The month's usage as CSV: one line per vendor product (``by=vendor``) or per day too."""
    first, last, _problem = _month(month, console.today())
    lines = console.usage.report(first, last, sites=who.sites)
    label = f"{first:%Y-%m}"
    chosen = per_vendor(lines, label) if by == "vendor" else lines
    return Response(
        report_csv(chosen),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="usage-{label}-per-{by}.csv"',
        },
    )
