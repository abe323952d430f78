"""``/api/v1/trials``: how a product did in a period (a silent trial, typically), and its
agreement with another product per finding code (JSON, or CSV with ``format=csv``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from pydantic import BaseModel

from adapters.api.deps import State, Viewer, parse_day
from adapters.api.responses import NOT_FOUND, invalid
from adapters.api.usage import MAX_DAYS, Format
from broker.model.errors import NotFoundError
from broker.model.trials import report_csv
from broker.runtime.trials import trial_report

router = APIRouter(prefix="/trials", tags=["usage"])


class CodeAgreementOut(BaseModel):
    code: str
    system: str
    meaning: str
    studies: int
    """Studies both products have findings of."""
    agree: int
    positive: int
    positive_against: int
    percent_agreement: float | None
    kappa: float | None
    """Cohen's kappa; null when chance agreement is total (e.g. never positive)."""


class TrialReportOut(BaseModel):
    vendor: str
    product: str
    against: str | None
    start: str
    end: str
    studies: int
    sent: int
    results: int
    failed: int
    no_answer: int
    failure_rate: float | None
    no_answer_rate: float | None
    turnaround_p50_seconds: float | None
    turnaround_p95_seconds: float | None
    positive: int
    positive_rate: float | None
    cost: str
    currency: str | None
    cost_basis: str
    agreement: list[CodeAgreementOut]


@router.get(
    "",
    response_model=TrialReportOut,
    summary="Trial report of a product (JSON, or CSV with format=csv)",
    responses={200: {"content": {"text/csv": {}}}, **NOT_FOUND},
)
def trials_report(
    *,
    api: State,
    _who: Viewer,
    vendor: Annotated[str, Query(min_length=1, max_length=64)],
    since: Annotated[str, Query(alias="from", description="First day (YYYY-MM-DD, site days).")],
    until: Annotated[str, Query(alias="to", description="Last day, included.")],
    against: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    format: Format = Format.JSON,
) -> TrialReportOut | Response:
    """Studies routed to ``vendor`` in the period: sent, results, failure and no-answer
    rates, turnaround p50/p95 (seconds), positive rate, agreement with ``against`` (default:
    the live vendor that read most of the same studies) per finding code, and the cost at
    the product's price."""
    start, end = parse_day(since, "from"), parse_day(until, "to")
    if end < start or (end - start).days >= MAX_DAYS:
        raise invalid(
            "to", until, f"from {start} to {end}: valid: to >= from, at most {MAX_DAYS} days"
        )
    try:
        found = trial_report(
            api.engine, api.settings, vendor, start=start, end=end, against=against
        )
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    if format is Format.CSV:
        return Response(
            report_csv(found),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="trial-{vendor}-{start}-{end}.csv"'
            },
        )
    data = found.as_json()
    data["start"], data["end"] = data.pop("from"), data.pop("to")
    return TrialReportOut.model_validate(data)
