"""Settings of the contracts under which the hospital uses its AI products.

``contracts:`` maps a contract's name to its terms; each names the vendor
product it covers::

    contracts:
      lungai-2026:
        vendor: lungai
        kind: package            # trial | package | per_use
        quota: 500               # uses per period (trial: free uses)
        period: month            # contract (default) | month | year
        start: 2026-01-01
        end: 2026-12-31
        price: 12000             # the package's price (per_use: per billing unit)
        currency: CNY
        payer: hospital          # hospital, device_maker, health_commission, patient, insurer…
        price_code: "310000012"  # 物价编码, with its province
        province: Zhejiang
        departments: [胸外科, 呼吸内科]
        when_used_up: fallback   # fallback | shadow | bill | stop
        when_outside_dates: stop
        when_department_not_allowed: stop
        charge_to: his           # an hl7 target: a DFT^P03 per use billed per use
        sites: [township-a]      # only these sites' studies (sites:); empty: all
        per_site: true           # each site counts its own quota
        when_site_not_allowed: stop

A vendor's ``billing:`` block (unit, price, trial quota) is read as a contract
of its own named after the vendor (:func:`billing_terms`); a vendor has either
``billing:`` or contracts, not both.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from broker.model.contract import ContractAction, ContractKind, ContractTerms, Period
from config.base import Strict
from config.sites import SiteId
from config.vendors import Billing, BillingUnit, QuotaAction

#: Who pays, as hospitals name it most often (any other text is accepted too).
PAYERS = ("hospital", "device_maker", "health_commission", "patient", "insurer")

ContractName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w][\w.-]*$")]
Text = Annotated[str, Field(min_length=1, max_length=128)]

_LEGACY_ACTION = {
    QuotaAction.BILL: ContractAction.BILL,
    QuotaAction.STOP_ROUTING: ContractAction.STOP,
    QuotaAction.MARK_UNBILLABLE: ContractAction.UNBILLED,
}


class Contract(Strict):
    """One contract of one vendor product (see the module's example)."""

    vendor: Annotated[str, Field(min_length=1)]
    kind: ContractKind
    start: date | None = None
    end: date | None = None
    quota: Annotated[int, Field(ge=0)] | None = None
    period: Period = Period.CONTRACT
    price: Annotated[Decimal, Field(ge=0)] = Decimal(0)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    unit: BillingUnit = BillingUnit.STUDY
    payer: Text = "hospital"
    price_code: Text | None = None
    province: Text | None = None
    departments: list[Text] = Field(default_factory=list)
    when_used_up: ContractAction = ContractAction.STOP
    when_outside_dates: ContractAction = ContractAction.STOP
    when_department_not_allowed: ContractAction = ContractAction.STOP
    charge_to: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")] | None = None
    """An ``hl7`` target (the HIS): each use billed per use is charged to it (DFT^P03)."""
    sites: list[SiteId] = Field(default_factory=list)
    """The sites (``sites:``) whose studies it covers; empty: every site and the hub."""
    per_site: bool = False
    """Each site counts its own ``quota`` uses a period (the hub's own studies as one)."""
    when_site_not_allowed: ContractAction = ContractAction.STOP

    @field_validator(
        "when_used_up",
        "when_outside_dates",
        "when_department_not_allowed",
        "when_site_not_allowed",
    )
    @classmethod
    def _configurable(cls, value: ContractAction) -> ContractAction:
        if value is ContractAction.UNBILLED:
            raise ValueError("valid: fallback, shadow, bill or stop")
        return value

    @field_validator("payer", mode="before")
    @classmethod
    def _payer(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(
                f"end {self.end} is before start {self.start}; valid: an end on or after the start"
            )
        if self.kind is ContractKind.PACKAGE and self.quota is None:
            raise ValueError("a package needs its quota (uses per period), e.g. quota: 500")
        if self.kind is ContractKind.TRIAL and self.quota is None and self.end is None:
            raise ValueError("a trial needs a quota (free uses) or an end date, or both")
        if self.kind is ContractKind.PER_USE and self.quota is not None:
            raise ValueError(
                "a per_use contract has no quota; valid: kind trial or package for a quota"
            )
        if self.per_site and self.quota is None:
            raise ValueError("per_site counts a quota per site; valid: a quota, or no per_site")
        if self.price_code is not None and self.province is None:
            raise ValueError("a price_code (物价编码) is approved per province; add province:")
        return self

    def terms(self, name: str) -> ContractTerms:
        """The contract as routing reads it."""
        return ContractTerms(
            name=name,
            vendor=self.vendor,
            kind=self.kind,
            start=self.start,
            end=self.end,
            quota=self.quota,
            period=self.period,
            departments=frozenset(d.strip().casefold() for d in self.departments),
            departments_shown=tuple(self.departments),
            when_used_up=self.when_used_up,
            when_outside_dates=self.when_outside_dates,
            when_department_not_allowed=self.when_department_not_allowed,
            currency=self.currency,
            price=self.price,
            unit=self.unit.value,
            payer=self.payer,
            price_code=self.price_code,
            province=self.province,
            sites=frozenset(self.sites),
            per_site=self.per_site,
            when_site_not_allowed=self.when_site_not_allowed,
        )


def billing_terms(vendor: str, billing: Billing) -> ContractTerms:
    """A vendor's ``billing:`` block as the contract it describes, named after the vendor:
    a trial of ``trial_quota`` free uses, then ``when_quota_used``; without a quota, per use."""
    trial = billing.trial_quota is not None
    return ContractTerms(
        name=vendor,
        vendor=vendor,
        kind=ContractKind.TRIAL if trial else ContractKind.PER_USE,
        quota=billing.trial_quota,
        when_used_up=_LEGACY_ACTION[billing.when_quota_used],
        currency=billing.currency,
        price=billing.price,
        unit=billing.unit.value,
    )
