"""``/api/v1/contracts``: each contract in force with its use in the current period, the
daily volume and the day its quota runs out (the package forecast)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel

from adapters.api.deps import State, Viewer, site_scoped
from broker.runtime.contracts import contract_statuses
from broker.store.contracts import ContractStore

router = APIRouter(prefix="/contracts", tags=["usage"])


class ContractOut(BaseModel):
    name: str
    site: str | None
    """The site whose own quota this line is (a quota counted per site: one line per site,
    the hub's name for its own studies); null: the contract's one quota."""
    sites: list[str]
    """The sites whose studies it covers; empty: every site and the hub."""
    per_site: bool
    vendor: str
    product: str
    kind: str
    state: str
    """``active``, ``not_started``, ``expired`` or ``used_up`` (today, any department)."""
    start: str | None
    end: str | None
    period: str
    current_period: str
    period_ends: str | None
    quota: int | None
    used: int
    """Uses counted in the current period (reserved when the study was routed)."""
    remaining: int | None
    per_day: float
    """Uses a day over the last 14 days (or since the contract began)."""
    runs_out: str | None
    """The day the quota is used up at that volume; null when it lasts the period."""
    price: str
    currency: str | None
    unit: str
    payer: str
    price_code: str | None
    province: str | None
    departments: list[str]
    when_used_up: str
    when_outside_dates: str
    when_department_not_allowed: str
    when_site_not_allowed: str


@router.get("", response_model=list[ContractOut], summary="Contracts, their use and forecast")
@site_scoped
def contracts(api: State, who: Viewer) -> list[ContractOut]:
    """Every contract of the configuration in force (a vendor's ``billing:`` read as one); a
    quota counted per site once per site. A site-scoped token sees the contracts of its
    sites, and of a per-site quota only its sites' lines."""
    store = ContractStore(api.engine)
    found = contract_statuses(api.settings, store, datetime.now(UTC), who.sites)
    return [ContractOut(**status.as_json()) for status in found]
