"""Contracts at routing time: the use counts routing decides with, and the reservations.

:func:`contract_use` reads, for every product's contract in force on the
site's date, how many uses its current period counted: the ``used`` input of
:func:`routing.decide` (the service, explain in the CLI, API and console all
read it this way). :class:`ContractDesk` is what the routing stage decides
through: it decides, reserves each delivery's terms in the store
(:meth:`broker.store.contracts.ContractStore.reserve`) and, when another
process took the last use of a quota meanwhile, decides again with that
contract used up, so a quota is never exceeded. :func:`contract_statuses` is
what ``GET /api/v1/contracts`` and the console's usage page show: each
contract's use in its current period and, for a quota, the day it runs out at
the recent daily volume.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from broker.model.contract import ContractTerms, Period
from broker.model.errors import StoreError
from broker.model.logging import get_logger
from broker.store.audit import SYSTEM, Action, AuditLog
from broker.store.contracts import ContractStore, JobTerms, Reserved
from config.schema import Settings
from routing import Decision, Dispatch, RuleSet

LOG = get_logger("radbridge.contracts")


def site_date(rules: RuleSet, now: datetime) -> date:
    """The site's date at ``now`` (contracts' dates and periods are site dates)."""
    return now.astimezone(rules.timezone).date()


def contract_use(store: ContractStore, rules: RuleSet, now: datetime) -> dict[str, int]:
    """Uses each contract counted in its current period, by
    :meth:`~broker.model.contract.ContractTerms.use_key` (its name; ``name@site`` for each
    site of a quota counted per site)."""
    day = site_date(rules, now)
    every = [t for product in rules.products.values() for t in product.contracts]
    shared = {t.name: (t.name, t.period.key(day)) for t in every if not t.per_site}
    counted = store.used(shared.values())
    out = {name: counted.get(key, 0) for name, key in shared.items()}
    for terms in every:
        if terms.per_site:
            for site, n in store.used_by_site(terms.name, terms.period.key(day)).items():
                out[terms.use_key(site)] = n
    return out


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
        *,
        site: str | None = None,
    ) -> Decision:
        """``decide(used)`` for a study of ``site``, with every delivery's terms reserved;
        decided again (the contract used up) when another process took a quota's last use
        meanwhile."""
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
            terms = contract_of(rules, full.vendor, full.terms.contract)
            assert terms is not None
            key = terms.use_key(site)
            counts[key] = max(counts.get(key, 0), quota)
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


#: The days whose uses make the daily volume a package's forecast is made with.
FORECAST_DAYS = 14


def period_end(terms: ContractTerms, day: date) -> date | None:
    """The last day of the quota period holding ``day`` (the contract's end at the latest)."""
    if terms.period is Period.MONTH:
        end: date | None = date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
    elif terms.period is Period.YEAR:
        end = date(day.year, 12, 31)
    else:
        end = terms.end
    if terms.end is not None and end is not None:
        return min(end, terms.end)
    return end


def runs_out(remaining: int, per_day: float, today: date, last: date | None) -> date | None:
    """The day the quota is used up at ``per_day`` uses a day (today when none remain);
    None when it lasts past ``last`` (the period's last day) or nothing is used."""
    if remaining <= 0:
        return today
    if per_day <= 0:
        return None
    day = today + timedelta(days=math.ceil(remaining / per_day) - 1)
    return None if last is not None and day > last else day


@dataclass(frozen=True, slots=True)
class ContractStatus:
    """A contract today: its use in the current period and when its quota runs out."""

    terms: ContractTerms
    product: str
    state: str
    period: str
    used: int
    per_day: float
    """Uses a day over the last :data:`FORECAST_DAYS` days (or since the contract began)."""
    period_ends: date | None
    runs_out: date | None
    site: str | None = None
    """The site whose own quota this is (a quota counted per site: the site's id, or the
    hub's name for its own studies); None: the contract's one quota."""

    @property
    def remaining(self) -> int | None:
        quota = self.terms.quota
        return None if quota is None else max(quota - self.used, 0)

    def as_json(self) -> dict[str, Any]:
        t = self.terms
        return {
            "name": t.name,
            "site": self.site,
            "sites": sorted(t.sites),
            "per_site": t.per_site,
            "vendor": t.vendor,
            "product": self.product,
            "kind": t.kind.value,
            "state": self.state,
            "start": t.start.isoformat() if t.start else None,
            "end": t.end.isoformat() if t.end else None,
            "period": t.period.value,
            "current_period": self.period,
            "period_ends": self.period_ends.isoformat() if self.period_ends else None,
            "quota": t.quota,
            "used": self.used,
            "remaining": self.remaining,
            "per_day": round(self.per_day, 2),
            "runs_out": self.runs_out.isoformat() if self.runs_out else None,
            "price": str(t.price),
            "currency": t.currency,
            "unit": t.unit,
            "payer": t.payer,
            "price_code": t.price_code,
            "province": t.province,
            "departments": list(t.departments_shown),
            "when_used_up": t.when_used_up.value,
            "when_outside_dates": t.when_outside_dates.value,
            "when_department_not_allowed": t.when_department_not_allowed.value,
            "when_site_not_allowed": t.when_site_not_allowed.value,
        }


def contract_statuses(
    settings: Settings,
    store: ContractStore,
    now: datetime,
    sites: frozenset[str] | None = None,
) -> list[ContractStatus]:
    """Every contract (a vendor's ``billing:`` read as one), with its use in the current
    period and, for a quota, the day it runs out at the recent daily volume; a quota
    counted per site once per site. ``sites``: only the contracts of those sites (and
    only their own quotas), for a caller limited to them."""
    zone = ZoneInfo(settings.site.timezone)
    today = now.astimezone(zone).date()
    products = settings.product_terms()
    every = [c for p in products.values() for c in p.contracts]
    counted = store.used((c.name, c.period.key(today)) for c in every)
    since_day = today - timedelta(days=FORECAST_DAYS - 1)
    out = []
    for terms in every:
        shares: list[str | None] = [None]
        if terms.per_site:
            listed: list[str | None] = [*sorted(terms.sites)]
            shares = listed if terms.sites else [*settings.sites, None]
        if sites is not None:
            if terms.sites and not terms.sites & sites:
                continue
            if not terms.sites and not terms.per_site:
                continue  # one quota shared with other sites: not theirs to see
            shares = [s for s in shares if s in sites]
        by_site = store.used_by_site(terms.name, terms.period.key(today)) if terms.per_site else {}
        first = max(since_day, terms.start or since_day)
        start = datetime.combine(first, time(0), zone)
        days = max((today - first).days + 1, 1)
        allowed = next(iter(terms.departments), None)  # no study here: dates and quota only
        last = period_end(terms, today)
        for share in shares:
            key = terms.counter(today, share)
            if terms.per_site:
                used = by_site.get(share, 0)
                counter = key if terms.quota is not None else None
            else:
                used = counted.get((terms.name, key), 0)
                counter = None
            recent = store.uses_since(terms.name, start, counter) if terms.quota is not None else []
            per_day = len(recent) / days
            site_of = share if share is not None or not terms.per_site else settings.site.name
            state = terms.check(today, allowed, used, share if terms.sites else None).state
            remaining = None if terms.quota is None else max(terms.quota - used, 0)
            out.append(
                ContractStatus(
                    terms=terms,
                    product=settings.vendors[terms.vendor].product,
                    state=state.value,
                    period=key,
                    used=used,
                    per_day=per_day,
                    period_ends=last,
                    runs_out=None
                    if remaining is None
                    else runs_out(remaining, per_day, today, last),
                    site=site_of if terms.per_site else None,
                )
            )
    return out


def audit_certificates(audit: AuditLog, settings: Settings, now: datetime) -> int:
    """Audit every product whose NMPA certificate is missing or expired today, with what
    the configuration makes of it (shadow, or live by ``live_without_certificate``); at
    the service's start and every configuration put in force. How many rows."""
    today = now.astimezone(ZoneInfo(settings.site.timezone)).date()
    written = 0
    for name, vendor in settings.vendors.items():
        if vendor.regulatory is None:
            continue
        problem = vendor.regulatory.regulatory().problem(today)
        if problem is None:
            continue
        live = vendor.regulatory.live_without_certificate
        detail = {
            "vendor": name,
            "product": vendor.product,
            "problem": problem,
            "mode": "live" if live else "shadow",
            "why": "regulatory.live_without_certificate" if live else "certificate",
        }
        try:
            audit.record(SYSTEM, Action.PRODUCT_CERTIFICATE, f"vendor:{name}", detail, now=now)
        except StoreError as exc:
            LOG.error("certificate state not audited", vendor=name, error=str(exc))
            continue
        written += 1
        LOG.warning("product without a valid certificate", **detail)
    return written
