"""Contracts and regulatory data of the AI products, as routing reads them.

A **contract** says how a vendor product is paid for (``trial``, ``package``,
``per_use``), by whom, under which price code, for which departments, between
which dates and with how many uses per period. :class:`ContractTerms` is one
contract, validated (``config.contracts`` builds it); :meth:`ContractTerms.check`
tells routing, for one study, whether the product may be used under it and
what the use counts as (:class:`UseCharge`).

A product's **regulatory data** (:class:`Regulatory`: NMPA class and
certificate, FDA/CE, intended use, version) says whether it may give results
to clinicians: a missing or expired certificate makes the product run in
``shadow`` mode (results kept, nothing written back) unless the configuration
allows it live.

Pure values and functions: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from broker.model.domain import CodedValue
from broker.model.mode import Mode

#: Between a quota period and the site in a per-site counter: ``2026-05@township-a``.
SITE_SEPARATOR = "@"
#: How texts name the hub's own studies' share of a per-site quota.
HUB_LABEL = "the hub"


class ContractKind(CodedValue):
    """How a product is paid for."""

    TRIAL = "trial"
    """Free, within a quota and/or dates."""
    PACKAGE = "package"
    """N studies (or series) per period for a price."""
    PER_USE = "per_use"
    """A price per billing unit."""


class ContractAction(CodedValue):
    """What routing does when a contract does not cover a study."""

    FALLBACK = "fallback"
    """Send the study to another vendor of the same kind whose contract covers it."""
    SHADOW = "shadow"
    """Send it in shadow mode: analysed and kept, nothing written back, never billed."""
    BILL = "bill"
    """Send it anyway, billed per use at the contract's price, with an alert."""
    STOP = "stop"
    """Do not send it."""
    UNBILLED = "unbilled"
    """Send it, counted but not billed (``billing.when_quota_used: mark_unbillable``)."""


class UseCharge(CodedValue):
    """What one use of a product counts as, decided when the study is routed."""

    TRIAL = "trial"
    PACKAGE = "package"
    PER_USE = "per_use"
    UNBILLED = "unbilled"
    SHADOW = "shadow"
    RETURNED = "returned"
    """Reserved when routed, given back to the quota: the job was cancelled before it was
    sent (order cancelled, operator)."""

    @property
    def counted(self) -> bool:
        """True when the use counts against the contract's quota."""
        return self in (UseCharge.TRIAL, UseCharge.PACKAGE)

    @property
    def billable(self) -> bool:
        """True when the use is billed on its own (per use)."""
        return self is UseCharge.PER_USE

    @property
    def free(self) -> bool:
        """True for a trial use (shadow uses count as trial: never billed)."""
        return self in (UseCharge.TRIAL, UseCharge.SHADOW)


class Period(CodedValue):
    """The period a contract's quota is counted over."""

    CONTRACT = "contract"
    """The whole contract, from its start to its end."""
    MONTH = "month"
    YEAR = "year"

    def key(self, day: date) -> str:
        """The counter's key of the period holding ``day`` (``all``, ``2026-05``, ``2026``)."""
        if self is Period.MONTH:
            return f"{day.year:04d}-{day.month:02d}"
        if self is Period.YEAR:
            return f"{day.year:04d}"
        return "all"


class ContractState(enum.StrEnum):
    """Whether a contract covers one study."""

    ACTIVE = "active"
    NOT_STARTED = "not_started"
    EXPIRED = "expired"
    DEPARTMENT = "department_not_allowed"
    SITE = "site_not_allowed"
    USED_UP = "used_up"


@dataclass(frozen=True, slots=True)
class ContractCheck:
    """A contract looked at for one study: its state, and what a use would count as."""

    contract: ContractTerms
    state: ContractState
    used: int
    """Uses counted in the current period (before this study)."""
    period: str
    charge: UseCharge | None = None
    """What the use counts as when the contract covers the study (state ``active``)."""
    why: str = ""
    """Why it does not cover it."""

    @property
    def covers(self) -> bool:
        return self.state is ContractState.ACTIVE

    @property
    def action(self) -> ContractAction:
        """The configured action for this state."""
        return self.contract.action_for(self.state)

    def __str__(self) -> str:
        terms = self.contract
        text = f"contract '{terms.name}' ({terms.kind}"
        if terms.quota is not None:
            text += f", {self.used}/{terms.quota} used"
            text += "" if terms.period is Period.CONTRACT else f" this {terms.period}"
            if terms.per_site:
                text += f" at {self.period.partition(SITE_SEPARATOR)[2] or HUB_LABEL}"
        text += ")"
        if self.covers:
            return f"{text}: {self.charge} use"
        return f"{text}: {self.why}"


@dataclass(frozen=True, slots=True)
class ContractTerms:
    """One contract of one vendor product."""

    name: str
    vendor: str
    kind: ContractKind
    start: date | None = None
    end: date | None = None
    """Last day covered (included)."""
    quota: int | None = None
    period: Period = Period.CONTRACT
    departments: frozenset[str] = frozenset()
    """Ordering departments allowed, casefolded; empty: every department."""
    departments_shown: tuple[str, ...] = ()
    when_used_up: ContractAction = ContractAction.STOP
    when_outside_dates: ContractAction = ContractAction.STOP
    when_department_not_allowed: ContractAction = ContractAction.STOP
    currency: str | None = None
    price: Decimal = Decimal(0)
    """Per use (``per_use`` and uses billed past a quota), or the package's price."""
    unit: str = "study"
    payer: str = "hospital"
    price_code: str | None = None
    province: str | None = None
    sites: frozenset[str] = frozenset()
    """The sites whose studies it covers; empty: every site and the hub's own."""
    per_site: bool = False
    """The quota is counted for each site apart (each site has ``quota`` uses a period)."""
    when_site_not_allowed: ContractAction = ContractAction.STOP

    def action_for(self, state: ContractState) -> ContractAction:
        """The action this contract configures for a state that does not cover a study."""
        if state is ContractState.USED_UP:
            return self.when_used_up
        if state is ContractState.DEPARTMENT:
            return self.when_department_not_allowed
        if state is ContractState.SITE:
            return self.when_site_not_allowed
        return self.when_outside_dates

    def covers_site(self, site: str | None) -> bool:
        """Whether the contract is for studies of ``site`` (None: the hub's own)."""
        return not self.sites or site in self.sites

    def use_key(self, site: str | None) -> str:
        """The name its use is counted under for a study of ``site``: the contract's name,
        or ``name@site`` when each site's quota is counted apart (``@`` alone: the hub)."""
        return f"{self.name}{SITE_SEPARATOR}{site or ''}" if self.per_site else self.name

    def counter(self, day: date, site: str | None) -> str:
        """The quota counter's period of a use on ``day`` by ``site``: ``2026-05``, or
        ``2026-05@township-a`` when each site's quota is counted apart."""
        key = self.period.key(day)
        return f"{key}{SITE_SEPARATOR}{site or ''}" if self.per_site else key

    def in_dates(self, day: date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)

    def check(
        self, day: date, department: str | None, used: int, site: str | None = None
    ) -> ContractCheck:
        """Whether this contract covers a study of ``site`` ordered by ``department`` on
        ``day`` (the site's date), with ``used`` uses already counted in ``day``'s period
        (the site's own, when counted per site)."""
        period = self.counter(day, site)
        if self.start is not None and day < self.start:
            why = f"not started (starts {self.start.isoformat()})"
            return ContractCheck(self, ContractState.NOT_STARTED, used, period, why=why)
        if self.end is not None and day > self.end:
            why = f"expired (ended {self.end.isoformat()})"
            return ContractCheck(self, ContractState.EXPIRED, used, period, why=why)
        if not self.covers_site(site):
            allowed = ", ".join(sorted(self.sites))
            got = f"site '{site}'" if site else "the hub's own study"
            why = f"{got} is not covered (sites: {allowed})"
            return ContractCheck(self, ContractState.SITE, used, period, why=why)
        if self.departments and (department or "").strip().casefold() not in self.departments:
            allowed = ", ".join(self.departments_shown)
            got = f"department '{department}'" if department else "no ordering department"
            why = f"{got} is not allowed (allowed: {allowed})"
            return ContractCheck(self, ContractState.DEPARTMENT, used, period, why=why)
        if self.quota is not None and used >= self.quota:
            return ContractCheck(self, ContractState.USED_UP, used, period, why="used up")
        charge = {
            ContractKind.TRIAL: UseCharge.TRIAL,
            ContractKind.PACKAGE: UseCharge.PACKAGE,
            ContractKind.PER_USE: UseCharge.PER_USE,
        }[self.kind]
        return ContractCheck(self, ContractState.ACTIVE, used, period, charge=charge)


def contract_in_force(
    contracts: Collection[ContractTerms], day: date, site: str | None = None
) -> ContractTerms | None:
    """The contract of a product that applies on ``day`` to a study of ``site``: of the
    contracts for that site, the first whose dates hold it, else the one nearest in time
    (whose dates then say why it does not apply); with none for that site, the nearest of
    all (which says the site is not covered)."""
    ordered = [c for c in contracts if c.covers_site(site)] or list(contracts)
    for terms in ordered:
        if terms.in_dates(day):
            return terms
    if not ordered:
        return None

    def distance(terms: ContractTerms) -> int:
        if terms.start is not None and day < terms.start:
            return (terms.start - day).days
        if terms.end is not None:
            return (day - terms.end).days
        return 0

    return min(ordered, key=distance)


@dataclass(frozen=True, slots=True)
class Regulatory:
    """A product's regulatory data (``vendors.<name>.regulatory``)."""

    nmpa_class: str | None = None
    """``II`` or ``III`` (NMPA medical device class)."""
    certificate: str | None = None
    """The NMPA registration certificate number (注册证编号)."""
    valid_from: date | None = None
    valid_until: date | None = None
    fda: str | None = None
    ce: str | None = None
    intended_use: str | None = None
    version: str | None = None
    live_without_certificate: bool = False
    """Run live even when the certificate is missing or expired (audited at load)."""

    def problem(self, day: date) -> str | None:
        """Why the certificate does not cover ``day`` (None: it does)."""
        if not self.certificate:
            return "no NMPA certificate"
        if self.valid_from is not None and day < self.valid_from:
            return f"NMPA certificate {self.certificate} not valid before {self.valid_from}"
        if self.valid_until is not None and day > self.valid_until:
            return f"NMPA certificate {self.certificate} expired {self.valid_until}"
        return None

    def label(self) -> str:
        """One line for the SR, the ORU and the console: ``NMPA class III 国械注准2023…
        valid to 2028-02-28; FDA K221234; intended use: …; version 3.2``."""
        parts = []
        if self.certificate:
            cls = f" class {self.nmpa_class}" if self.nmpa_class else ""
            until = f" valid to {self.valid_until.isoformat()}" if self.valid_until else ""
            parts.append(f"NMPA{cls} {self.certificate}{until}")
        else:
            parts.append("no NMPA certificate")
        if self.fda:
            parts.append(f"FDA {self.fda}")
        if self.ce:
            parts.append(f"CE {self.ce}")
        if self.intended_use:
            parts.append(f"intended use: {self.intended_use}")
        if self.version:
            parts.append(f"version {self.version}")
        return "; ".join(parts)

    def as_json(self, day: date | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "nmpa_class": self.nmpa_class,
            "certificate": self.certificate,
            "valid_from": self.valid_from.isoformat() if self.valid_from else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "fda": self.fda,
            "ce": self.ce,
            "intended_use": self.intended_use,
            "version": self.version,
        }
        if day is not None:
            problem = self.problem(day)
            out["certificate_valid"] = problem is None
            out["problem"] = problem
        return out


@dataclass(frozen=True, slots=True)
class ProductTerms:
    """What routing knows about one vendor product besides its kind."""

    vendor: str
    mode: Mode = Mode.LIVE
    contracts: tuple[ContractTerms, ...] = ()
    regulatory: Regulatory | None = None
