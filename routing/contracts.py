"""Contracts and regulatory data at decision time: may this product get this study, and how.

Routing decides with the contract state it is given: the uses each contract
has counted in its current period (``used``, by contract name, or ``name@site``
for a quota each site counts apart; the store's counters). For each delivery a
route would make, :func:`judge` finds the product's contract in force on the
site's date for the study's site and checks the dates, the site, the ordering
department and the quota. When the contract does not cover the study its
configured action applies: ``fallback`` (the first vendor of the route's
``fallback_to`` order whose contract covers it, or without one the first other
vendor of the same kind), ``shadow``, ``bill`` (per use, with an alert),
``stop``. A product whose certificate is missing or expired, or whose
vendor is ``mode: shadow``, is sent in shadow mode. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date

from broker.model.contract import (
    ContractAction,
    ContractCheck,
    ContractState,
    ProductTerms,
    UseCharge,
    contract_in_force,
)
from broker.model.mode import Mode, ShadowCause

_SETTING = {
    ContractState.USED_UP: "when_used_up",
    ContractState.DEPARTMENT: "when_department_not_allowed",
    ContractState.SITE: "when_site_not_allowed",
}


@dataclass(frozen=True, slots=True)
class Terms:
    """The terms a delivery is made under (kept with its job)."""

    contract: str | None = None
    charge: UseCharge | None = None
    """What the use counts as; None: no contract (counted as before contracts)."""
    shadow: ShadowCause | None = None
    """Why the delivery runs in shadow mode (:mod:`broker.model.mode`); None: live."""
    period: str | None = None
    """The quota period the use counts in (``2026-05``, ``all``), when it counts."""
    quota: int | None = None
    alert: str | None = None
    """Why an operator should look (billed past a package, live without certificate)."""
    state: str | None = None
    """The contract's state as explain shows it."""

    @property
    def mode(self) -> Mode:
        return Mode.LIVE if self.shadow is None else Mode.SHADOW

    @property
    def counted(self) -> bool:
        """True when the use takes one of the contract's quota."""
        return self.quota is not None and self.charge is not None and self.charge.counted


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a delivery is made, to whom, under which terms; ``why`` when it is not."""

    vendor: str
    terms: Terms | None
    why: str = ""
    instead_of: str | None = None
    """The vendor the route named, when a contract's fallback sends to another."""


def check_contract(
    product: ProductTerms | None,
    day: date,
    department: str | None,
    used: Mapping[str, int],
    site: str | None = None,
) -> ContractCheck | None:
    """The product's contract in force on ``day`` for a study of ``site``, checked (None:
    it has none); ``used`` by :meth:`~broker.model.contract.ContractTerms.use_key`."""
    if product is None:
        return None
    terms = contract_in_force(product.contracts, day, site)
    if terms is None:
        return None
    return terms.check(day, department, used.get(terms.use_key(site), 0), site)


def _terms(product: ProductTerms | None, check: ContractCheck | None, day: date) -> Terms:
    """The terms of a delivery the contract covers (or takes on by its action), with the
    product's mode and certificate applied."""
    contract = check.contract if check is not None else None
    charge = check.charge if check is not None else None
    quota = contract.quota if contract is not None else None
    alert = None
    shadow = None
    if product is not None and product.mode is Mode.SHADOW:
        shadow = ShadowCause.CONFIGURATION
    regulatory = product.regulatory if product is not None else None
    problem = regulatory.problem(day) if regulatory is not None else None
    if problem is not None and regulatory is not None:
        if regulatory.live_without_certificate:
            alert = f"{problem}: live by configuration (live_without_certificate)"
        else:
            shadow = shadow or ShadowCause.CERTIFICATE
            alert = f"{problem}: shadow mode only"
    if shadow is not None:
        charge = UseCharge.SHADOW if charge is not None else None
    return Terms(
        contract=contract.name if contract is not None else None,
        charge=charge,
        shadow=shadow,
        period=check.period if check is not None else None,
        quota=quota,
        alert=alert,
        state=str(check) if check is not None else None,
    )


def route_shadow(terms: Terms) -> Terms:
    """The terms of a delivery on a route in ``mode: shadow``: shadow mode (the configuration
    says so; a reload can lift it), never billed, never taking a contract's quota."""
    return replace(
        terms,
        shadow=ShadowCause.CONFIGURATION,
        charge=UseCharge.SHADOW if terms.charge is not None else None,
    )


def judge(
    products: Mapping[str, ProductTerms],
    kinds: Mapping[str, str],
    vendor: str,
    *,
    day: date,
    department: str | None,
    used: Mapping[str, int],
    taken: Collection[str] = (),
    site: str | None = None,
    order: Sequence[str] = (),
) -> Verdict:
    """Whether ``vendor`` gets the study under its contract, or whom its action sends it to.

    ``kinds`` maps every vendor (in configuration order) to its kind; ``taken`` names
    vendors a fallback must not pick (they have the study already); ``order`` is the
    route's fallback order for ``vendor`` (``fallback_to``): a fallback tries those
    vendors, in that order, whatever their kind, instead of the vendors of its kind.
    """
    product = products.get(vendor)
    check = check_contract(product, day, department, used, site)
    if check is None or check.covers:
        return Verdict(vendor, _terms(product, check, day))
    action = check.action
    setting = _SETTING.get(check.state, "when_outside_dates")
    if action is ContractAction.STOP:
        return Verdict(vendor, None, f"{vendor}: not sent: {check} ({setting}: stop)")
    if action is ContractAction.FALLBACK:
        kind = kinds.get(vendor, vendor)
        named = f"fallback_to: {', '.join(order)}"
        tried = order or [other for other, other_kind in kinds.items() if other_kind == kind]
        for other in tried:
            if other == vendor or other in taken:
                continue
            other_product = products.get(other)
            found = check_contract(other_product, day, department, used, site)
            if found is None or found.covers:
                terms = _terms(other_product, found, day)
                why = f"{vendor}: {check}: fallback to {other}" + (f" ({named})" if order else "")
                return Verdict(other, terms, why, vendor)
        nobody = (
            f"none of {', '.join(order)} (the route's fallback_to)"
            if order
            else f"no other vendor of kind '{kind}'"
        )
        return Verdict(
            vendor,
            None,
            f"{vendor}: not sent: {check} ({setting}: fallback, but {nobody} has a contract "
            "that covers the study)",
        )
    base = _terms(product, check, day)
    if action is ContractAction.SHADOW:
        terms = Terms(
            contract=base.contract,
            charge=UseCharge.SHADOW,
            shadow=base.shadow or ShadowCause.CONTRACT,
            period=base.period,
            alert=base.alert,
            state=f"{check}: shadow mode ({setting}: shadow)",
        )
        return Verdict(vendor, terms)
    charge = UseCharge.PER_USE if action is ContractAction.BILL else UseCharge.UNBILLED
    if base.shadow is not None:
        charge = UseCharge.SHADOW
    shown = "billed per use" if charge is UseCharge.PER_USE else str(charge)
    terms = Terms(
        contract=base.contract,
        charge=charge,
        shadow=base.shadow,
        period=base.period,
        alert=base.alert or (f"{check.contract.name}: {check.why}: {shown}"),
        state=f"{check}: {shown} ({setting}: {action})",
    )
    return Verdict(vendor, terms)
