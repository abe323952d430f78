"""Contracts at routing time: the use counts routing decides with, and the reservations.

:func:`contract_use` reads, for every product's contract in force on the
site's date, how many uses its current period counted: the ``used`` input of
:func:`routing.decide` (the service, explain in the CLI, API and console all
read it this way). :class:`ContractDesk` is what the routing stage decides
through: it decides, reserves each delivery's terms in the store
(:meth:`broker.store.contracts.ContractStore.reserve`) and, when another
process took the last use of a quota meanwhile, decides again with that
contract used up, so a quota is never exceeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime

from broker.model.contract import ContractTerms, contract_in_force
from broker.model.logging import get_logger
from broker.store.contracts import ContractStore, JobTerms, Reserved
from routing import Decision, Dispatch, RuleSet

LOG = get_logger("radbridge.contracts")


def site_date(rules: RuleSet, now: datetime) -> date:
    """The site's date at ``now`` (contracts' dates and periods are site dates)."""
    return now.astimezone(rules.timezone).date()


def contracts_in_force(rules: RuleSet, day: date) -> dict[str, ContractTerms]:
    """Each product's contract in force on ``day`` (or nearest), by contract name."""
    out: dict[str, ContractTerms] = {}
    for product in rules.products.values():
        terms = contract_in_force(product.contracts, day)
        if terms is not None:
            out[terms.name] = terms
    return out


def contract_use(store: ContractStore, rules: RuleSet, now: datetime) -> dict[str, int]:
    """Uses each contract in force counted in its current period, by contract name."""
    day = site_date(rules, now)
    keys = {name: (name, t.period.key(day)) for name, t in contracts_in_force(rules, day).items()}
    counted = store.used(keys.values())
    return {name: counted.get(key, 0) for name, key in keys.items()}


def contract_of(rules: RuleSet, vendor: str, name: str | None) -> ContractTerms | None:
    """A vendor product's contract by name."""
    product = rules.products.get(vendor)
    if product is None or name is None:
        return None
    return next((c for c in product.contracts if c.name == name), None)


def job_terms(study_uid: str, dispatch: Dispatch, rules: RuleSet) -> JobTerms:
    """The row the store keeps of a dispatch's terms."""
    terms = dispatch.terms
    contract = contract_of(rules, dispatch.vendor, terms.contract)
    return JobTerms(
        study_uid=study_uid,
        vendor=dispatch.vendor,
        route=dispatch.route,
        contract=terms.contract,
        charge=terms.charge,
        period=terms.period,
        payer=contract.payer if contract else None,
        price_code=contract.price_code if contract else None,
        province=contract.province if contract else None,
        price=contract.price if contract else None,
        currency=contract.currency if contract else None,
        alert=terms.alert,
    )


class ContractDesk:
    """Decides with the contracts' use and reserves each delivery's terms."""

    def __init__(self, store: ContractStore) -> None:
        self.store = store

    def route(
        self,
        study_uid: str,
        rules: RuleSet,
        now: datetime,
        decide: Callable[[Mapping[str, int]], Decision],
        used: Mapping[str, int] | None = None,
    ) -> Decision:
        """``decide(used)``, with every delivery's terms reserved; decided again (the
        contract used up) when another process took a quota's last use meanwhile."""
        counts = dict(used if used is not None else contract_use(self.store, rules, now))
        for _ in range(len(counts) + 1):
            decision = decide(counts)
            full = self._reserve(study_uid, decision, rules, now)
            if full is None:
                return decision
            quota = full.terms.quota or 0
            LOG.info(
                "contract used up by another process; deciding again",
                study_uid=study_uid,
                vendor=full.vendor,
                contract=full.terms.contract,
            )
            counts = contract_use(self.store, rules, now)
            assert full.terms.contract is not None
            counts[full.terms.contract] = max(counts.get(full.terms.contract, 0), quota)
        return decide(counts)

    def _reserve(
        self, study_uid: str, decision: Decision, rules: RuleSet, now: datetime
    ) -> Dispatch | None:
        """Reserve each dispatch's terms; the first whose quota was full, if any."""
        for dispatch in decision.dispatches:
            terms = dispatch.terms
            if terms.contract is None:
                continue
            reserved = self.store.reserve(job_terms(study_uid, dispatch, rules), terms.quota, now)
            if reserved is Reserved.FULL:
                return dispatch
            if reserved is Reserved.NEW and terms.alert:
                LOG.warning(
                    "contract alert",
                    study_uid=study_uid,
                    vendor=dispatch.vendor,
                    contract=terms.contract,
                    alert=terms.alert,
                )
        return None
