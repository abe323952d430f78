"""``/api/v1/usage``: delivered studies per vendor, product, site and day for settlement
(JSON or CSV). ``/usage/quotas`` is the old name of ``/api/v1/contracts``."""

from __future__ import annotations

import enum
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from adapters.api.contracts import ContractOut, contracts
from adapters.api.deps import State, Viewer, parse_day, site_scoped
from adapters.api.responses import invalid
from broker.store.usage import report_csv

router = APIRouter(prefix="/usage", tags=["usage"])

#: The longest period one report covers.
MAX_DAYS = 366


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


class UsageLineOut(BaseModel):
    vendor: str
    product: str
    site: str
    day: str
    unit: str
    studies: int
    quantity: int
    billable: int
    trial: int
    unbillable: int
    amount: str
    currency: str | None
    package: int = 0
    contract: str | None = None
    payer: str | None = None
    price_code: str | None = None
    province: str | None = None


@router.get(
    "",
    response_model=list[UsageLineOut],
    summary="Usage report (JSON, or CSV with format=csv)",
    responses={200: {"content": {"text/csv": {}}}},
)
@site_scoped
def usage_report(
    *,
    api: State,
    who: Viewer,
    since: Annotated[str, Query(alias="from", description="First day (YYYY-MM-DD, site days).")],
    until: Annotated[str, Query(alias="to", description="Last day, included.")],
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    site: Annotated[
        str | None, Query(max_length=128, description="Only this site (its id; the hub's name).")
    ] = None,
    format: Format = Format.JSON,
) -> list[UsageLineOut] | Response:
    """One line per vendor, product, site, day, unit and contract (with its payer, price
    code and province): studies, quantity (in the unit), of it billable, trial, within a
    package and unbillable, and the amount at the configured price. ``site`` is the sending
    site's id (``sites:``), or the hub's name (``site.name``) for its own studies; a
    site-scoped token sees only its sites' lines."""
    start, end = parse_day(since, "from"), parse_day(until, "to")
    if end < start or (end - start).days >= MAX_DAYS:
        raise invalid(
            "to", until, f"from {start} to {end}: valid: to >= from, at most {MAX_DAYS} days"
        )
    wanted = who.sites if site is None else {site} & (who.sites or {site})
    lines = api.usage.report(start, end, vendor, wanted)
    if format is Format.CSV:
        return Response(
            report_csv(lines),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="usage-{start}-{end}.csv"'},
        )
    return [UsageLineOut(**line.as_json()) for line in lines]


@router.get(
    "/quotas",
    response_model=list[ContractOut],
    deprecated=True,
    summary="Old name of /contracts (trial quotas are contracts)",
)
def quotas(api: State, who: Viewer) -> list[ContractOut]:
    """The same answer as ``GET /api/v1/contracts``: a vendor's ``billing:`` trial quota is
    its trial contract there, with its use. Kept for existing clients."""
    return contracts(api, who)
