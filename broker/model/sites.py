"""Sites: the sending institutions a regional hub serves, and who a study or order is from.

A :class:`SiteDirectory` attributes a study to a site by its sender (calling AE title
and the address it connected from) and an order by its HL7 sending facility (MSH-4).
With no sites configured everything belongs to the one implicit site: ``None``.

A route's write-back ``site.NAME`` is the originating site's own target ``NAME``
(:meth:`SiteDirectory.target_for`); it resolves to a target of that site only, so a
result can never reach another site's PACS or RIS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field, replace

from broker.model.domain import Patient

#: How a route names "the originating site's target": ``site.pacs``.
SITE_TARGET_PREFIX = "site."

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def site_target(site: str, name: str) -> str:
    """The write-back target name of site ``site``'s own target ``name``: ``site.a.pacs``."""
    return f"{SITE_TARGET_PREFIX}{site}.{name}"


def target_site(target: str) -> str | None:
    """The site whose own target ``target`` is (``site.a.pacs`` → ``a``), or None."""
    if not target.startswith(SITE_TARGET_PREFIX):
        return None
    rest = target.removeprefix(SITE_TARGET_PREFIX)
    site, dot, _ = rest.partition(".")
    return site if dot else None


def parse_sites(text: str | None) -> frozenset[str] | None:
    """A token's or user's stored site scope (comma-separated); None: every site."""
    if text is None:
        return None
    return frozenset(part for part in text.split(",") if part)


def join_sites(sites: Collection[str] | None) -> str | None:
    """A site scope as the store keeps it; None (every site) stays None.

    An empty scope is refused: a token limited to no site would open nothing."""
    if sites is None:
        return None
    chosen = sorted(set(sites))
    if not chosen:
        raise ValueError("a site scope needs at least one site; valid: one or more site ids")
    return ",".join(chosen)


@dataclass(frozen=True, slots=True)
class SiteSender:
    """A modality or PACS of a site: calling AE title and where it connects from."""

    ae_title: str
    network: Network

    def matches(self, calling_ae: str, address: str) -> bool:
        if calling_ae.strip() != self.ae_title:
            return False
        try:
            return ipaddress.ip_address(address) in self.network
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """One site as intake, routing and write-back see it."""

    id: str
    name: str
    timezone: str
    senders: tuple[SiteSender, ...] = ()
    hl7_facility: str | None = None
    issuer: str | None = None
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SiteDirectory:
    """Every configured site; empty: the one implicit site."""

    sites: tuple[SiteInfo, ...] = ()
    refuse_unknown_facility: bool = False
    """``hl7.unknown_facility: refuse``: an HL7 message whose MSH-4 is no site's (and not
    one of ``hub_facilities``) is refused instead of taken as the hub's."""
    hub_facilities: frozenset[str] = frozenset()
    """MSH-4 values of the hub's own RIS (``hl7.hub_facilities``)."""
    _by_id: dict[str, SiteInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {s.id: s for s in self.sites})

    def __bool__(self) -> bool:
        return bool(self.sites)

    @property
    def ids(self) -> Collection[str]:
        return self._by_id.keys()

    def get(self, site: str | None) -> SiteInfo | None:
        return self._by_id.get(site) if site is not None else None

    def for_sender(self, calling_ae: str, address: str) -> str | None:
        """The site whose sender this is (calling AE title from this address), or None."""
        for site in self.sites:
            if any(s.matches(calling_ae, address) for s in site.senders):
                return site.id
        return None

    def sender_titles(self) -> frozenset[str]:
        """Every site's senders' calling AE titles."""
        return frozenset(s.ae_title for site in self.sites for s in site.senders)

    def for_facility(self, facility: str | None) -> str | None:
        """The site whose RIS sends as MSH-4 ``facility``, or None."""
        if not facility:
            return None
        wanted = facility.strip()
        for site in self.sites:
            if site.hl7_facility is not None and site.hl7_facility == wanted:
                return site.id
        return None

    def patient_of(self, site: str | None, patient: Patient) -> Patient:
        """``patient`` as site ``site`` names it: with the site's ``issuer`` when the record
        names no issuer of its own (IssuerOfPatientID, PID-3.4), so that two sites' patient
        "12345" are two patients. A record naming its issuer keeps it."""
        found = self.get(site)
        if found is None or found.issuer is None or patient.issuer or not patient.patient_id:
            return patient
        return replace(patient, issuer=found.issuer)

    def named(self, code: str | None) -> str | None:
        """The site whose id or ``hl7_facility`` is ``code`` (a FHIR Organization's
        identifier), or None."""
        wanted = (code or "").strip()
        if wanted in self._by_id:
            return wanted
        return self.for_facility(wanted)

    def unknown_facility(self, facility: str | None) -> bool:
        """True when an HL7 message from MSH-4 ``facility`` is to be refused: sites are
        configured, ``hl7.unknown_facility`` is ``refuse``, and the facility is neither a
        site's nor one of the hub's own."""
        if not self.sites or not self.refuse_unknown_facility:
            return False
        wanted = (facility or "").strip()
        return wanted not in self.hub_facilities and self.for_facility(wanted) is None

    def target_for(self, name: str, site: str | None) -> str | None:
        """The target a route's write-back ``name`` stands for, for a study of ``site``:
        ``name`` itself for a hub target; for ``site.NAME`` the site's own target, or None
        when the study has no site or its site has no target ``NAME``."""
        if not name.startswith(SITE_TARGET_PREFIX):
            return name
        found = self.get(site)
        own = name.removeprefix(SITE_TARGET_PREFIX)
        if found is None or own not in found.targets:
            return None
        return site_target(found.id, own)
