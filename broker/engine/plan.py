"""What the job engine reads from the configuration in force: one :class:`Plan` per attempt.

The engine never holds settings of its own. Each routing decision, dispatch and
attempt takes the plan in force from :class:`Plans` (``with plans.use() as plan``)
and uses only that plan, start to end, so a reload in the middle of an attempt
changes nothing for it and the next attempt sees the new vendor address. The
running service's :class:`broker.runtime.snapshot.Snapshot` is such a plan; the
engine sees only these protocols, so it imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.model.critical import CriticalPolicy
from broker.model.deid import Deidentify
from broker.model.errors import ConfigError
from broker.model.priors import PriorsPolicy
from broker.model.sites import SiteDirectory
from broker.model.target import WritebackTarget
from broker.model.vendor import VendorTransport
from broker.model.verdicts import VerdictLinks
from broker.model.writeback import TargetSpec


@dataclass(frozen=True, slots=True)
class VendorSpec:
    """How to deliver to one vendor product: transport, concurrency and retry policy."""

    name: str
    transport: str
    """The registered transport type (``dicom``, ``dicomweb``, ``http``, …)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The transport's own settings (for ``dicom``: ae_title, host, port, …)."""
    concurrency: int = 1
    """Jobs of this vendor in flight at once."""
    max_attempts: int = 5
    backoff_base: float = 30.0
    """Seconds; the wait before retry n is drawn from [0, min(cap, base * 2**(n-1))]."""
    backoff_cap: float = 3600.0

    def __post_init__(self) -> None:
        problems = []
        if self.concurrency < 1:
            problems.append(f"concurrency is {self.concurrency}; valid: 1 or more")
        if self.max_attempts < 1:
            problems.append(f"max_attempts is {self.max_attempts}; valid: 1 or more")
        if self.backoff_base < 0 or self.backoff_cap < self.backoff_base:
            problems.append(
                f"backoff base {self.backoff_base} s, cap {self.backoff_cap} s; "
                "valid: 0 <= base <= cap"
            )
        if problems:
            lines = [f"vendors.{self.name}: {p}" for p in problems]
            raise ConfigError(lines[0], lines)


class Plan(Protocol):
    """The configuration one decision or attempt uses, whole and unchanging."""

    @property
    def id(self) -> str:
        """Names this configuration in job and write-back histories."""
        ...

    @property
    def vendor_names(self) -> Collection[str]: ...

    @property
    def target_names(self) -> Collection[str]:
        """Every write-back target, the notification webhook included."""
        ...

    @property
    def ris_status(self) -> str | None:
        """The hl7 target that hears of urgent results' order status, if any."""
        ...

    @property
    def procedure_steps_to_ris(self) -> bool:
        """Whether ``ris_status`` also hears of modalities' procedure steps (MPPS)."""
        ...

    @property
    def overdue_check_seconds(self) -> float: ...

    @property
    def critical(self) -> CriticalPolicy:
        """Critical-result cases: contacts, channels, deadline, signed links."""
        ...

    def vendor(self, name: str) -> VendorSpec:
        """The vendor's spec; :class:`ConfigError` naming the valid ones if it is not here."""
        ...

    def transport(self, name: str) -> VendorTransport:
        """The vendor's transport, built for this plan."""
        ...

    def target(self, name: str) -> TargetSpec | None: ...

    def writer(self, name: str) -> WritebackTarget:
        """The write-back target, built for this plan."""
        ...

    def write_back(self, route: str) -> tuple[str, ...] | None:
        """The targets a route writes back to; None when no such route is configured."""
        ...

    @property
    def sites(self) -> SiteDirectory:
        """The hub's sites: a route's ``site.NAME`` is the originating site's target."""
        ...

    def shadow(self, route: str, vendor: str) -> bool:
        """True when the route or the vendor is ``mode: shadow`` (nothing written back)."""
        ...

    def deidentify(self, vendor: str, route: str) -> Deidentify | None:
        """How what ``route`` sends ``vendor`` is de-identified; None: sent as received."""
        ...

    def priors(self, route: str) -> PriorsPolicy | None:
        """The prior studies ``route`` sends along, and their PACS; None: none."""
        ...

    def regulatory(self, vendor: str) -> str | None:
        """The vendor product and its regulatory data in one line; None: not configured."""
        ...

    @property
    def pseudonym_secret(self) -> str | None:
        """The installation's key of pseudonyms (set whenever a profile is configured)."""
        ...

    @property
    def verdict_links(self) -> VerdictLinks | None:
        """Makes the one-click verdict links notifications carry; None: no links."""
        ...


class Plans(Protocol):
    """Where the plan in force comes from (the service's snapshot holder)."""

    @property
    def current(self) -> Plan: ...

    def use(self) -> AbstractContextManager[Plan]:
        """The plan in force, kept whole (and its connections open) until the block ends."""
        ...

    def on_swap(self, listener: Callable[[Plan, Plan], None]) -> None:
        """Call ``listener(old, new)`` after each swap (new vendors, new targets)."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class FixedPlan:
    """A plan made in code from ready parts (tests, benchmarks, one-off commands)."""

    vendors: dict[str, VendorSpec] = field(default_factory=dict)
    transports: dict[str, VendorTransport] = field(default_factory=dict)
    targets: dict[str, TargetSpec] = field(default_factory=dict)
    writers: dict[str, WritebackTarget] = field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Route name → the targets it writes back to."""
    ris_status: str | None = None
    procedure_steps_to_ris: bool = False
    overdue_check_seconds: float = 5.0
    critical: CriticalPolicy = field(default_factory=CriticalPolicy)
    id: str = "fixed"
    shadows: frozenset[str] = frozenset()
    """The routes and vendors in shadow mode."""
    deidentified: dict[str, Deidentify] = field(default_factory=dict)
    """Vendor name → the profile of what it is sent."""
    pseudonym_secret: str | None = field(default=None, repr=False)
    verdict_links: VerdictLinks | None = None
    regulatory_labels: dict[str, str] = field(default_factory=dict)
    """Vendor name → its product and regulatory data in one line."""
    sites: SiteDirectory = field(default_factory=SiteDirectory)
    prior_policies: dict[str, PriorsPolicy] = field(default_factory=dict)
    """Route name → the priors it sends along."""

    def __post_init__(self) -> None:
        missing = sorted(set(self.vendors) - set(self.transports))
        missing += sorted(set(self.targets) - set(self.writers))
        if missing:
            raise ConfigError(f"nothing built for {', '.join(missing)}")
        if self.deidentified and not self.pseudonym_secret:
            raise ConfigError("de-identification needs a pseudonym_secret; none was given")

    @property
    def vendor_names(self) -> Collection[str]:
        return self.vendors.keys()

    @property
    def target_names(self) -> Collection[str]:
        return self.targets.keys()

    def vendor(self, name: str) -> VendorSpec:
        if name not in self.vendors:
            valid = ", ".join(sorted(self.vendors)) or "none configured"
            raise ConfigError(f"no vendor '{name}' is configured; valid: {valid}")
        return self.vendors[name]

    def transport(self, name: str) -> VendorTransport:
        self.vendor(name)
        return self.transports[name]

    def target(self, name: str) -> TargetSpec | None:
        return self.targets.get(name)

    def writer(self, name: str) -> WritebackTarget:
        if name not in self.writers:
            valid = ", ".join(sorted(self.writers)) or "none configured"
            raise ConfigError(f"no write-back target '{name}' is configured; valid: {valid}")
        return self.writers[name]

    def write_back(self, route: str) -> tuple[str, ...] | None:
        return self.routes.get(route)

    def shadow(self, route: str, vendor: str) -> bool:
        return route in self.shadows or vendor in self.shadows

    def deidentify(self, vendor: str, route: str) -> Deidentify | None:
        return self.deidentified.get(vendor)

    def priors(self, route: str) -> PriorsPolicy | None:
        return self.prior_policies.get(route)

    def regulatory(self, vendor: str) -> str | None:
        return self.regulatory_labels.get(vendor)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class FixedPlans:
    """Plans that never change: one :class:`FixedPlan` (or any plan) in force for good."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    @property
    def current(self) -> Plan:
        return self._plan

    @contextmanager
    def use(self) -> Iterator[Plan]:
        yield self._plan

    def on_swap(self, listener: Callable[[Plan, Plan], None]) -> None:
        """Never called: a fixed plan is never swapped."""
