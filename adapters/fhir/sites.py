"""Which site a FHIR order is from: the caller's token, or the Organization it names.

On a hub with ``sites:``, a ServiceRequest is a site's order when

- its ``requester``, or one of its ``performer`` s, is an Organization (a reference of
  ``type: Organization``, to ``Organization/…``, or to a contained Organization) with an
  ``identifier`` whose value is a site's id or ``hl7_facility`` (the MSH-4 its RIS
  uses); or
- it comes with a token limited to one site (``tokens create --site ID``).

A token limited to sites may create orders for those sites only: an order naming
another site is 403; a token of several sites must name one (422). Naming two sites
is 422. An unlimited token's order naming no site is the hub's own, as before. Wire
format only: the store sees :attr:`broker.model.domain.Order.site`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.fhir.outcome import FhirError
from broker.model.domain import Order
from broker.model.sites import SiteDirectory

ORGANIZATION = "Organization"


def _organizations(sr: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(element, identifier) of each Organization the requester and performers name."""
    contained = {
        f"#{c.get('id')}": c
        for c in sr.get("contained") or []
        if isinstance(c, dict) and c.get("resourceType") == ORGANIZATION
    }
    references = [(f"{path}.requester", sr.get("requester"))]
    performers = sr.get("performer")
    if isinstance(performers, list):
        references += [(f"{path}.performer[{n}]", p) for n, p in enumerate(performers)]
    for where, ref in references:
        if not isinstance(ref, dict):
            continue
        target = str(ref.get("reference") or "")
        inline = contained.get(target)
        if inline is not None:
            for identifier in inline.get("identifier") or []:
                if isinstance(identifier, dict):
                    yield where, identifier
            continue
        if ref.get("type") == ORGANIZATION or target.startswith(f"{ORGANIZATION}/"):
            identifier = ref.get("identifier")
            if isinstance(identifier, dict):
                yield where, identifier


def named_site(sr: Mapping[str, Any], sites: SiteDirectory, path: str) -> tuple[str, str] | None:
    """The site a ServiceRequest's requester or performers name, with the element; 422
    when they name two sites."""
    found: dict[str, str] = {}
    for where, identifier in _organizations(sr, path):
        value = identifier.get("value")
        site = sites.named(value) if isinstance(value, str) else None
        if site is not None:
            found.setdefault(site, where)
    if len(found) > 1:
        named = ", ".join(sorted(found))
        raise FhirError.one(
            422,
            f"{path} names the Organizations of several sites ({named}); valid: one site",
            next(iter(found.values())),
            code="business-rule",
        )
    return next(iter(found.items()), None)


def order_site(
    sr: Mapping[str, Any],
    sites: SiteDirectory,
    token_sites: Collection[str] | None,
    path: str = "ServiceRequest",
) -> str | None:
    """The site of a ServiceRequest sent with a token limited to ``token_sites`` (None:
    every site); see the module for the rules and their answers."""
    if not sites:
        return None
    named = named_site(sr, sites, path)
    if token_sites is None:
        return named[0] if named is not None else None
    scope = sorted(token_sites)
    if named is None:
        if len(scope) == 1:
            return scope[0]
        raise FhirError.one(
            422,
            f"this token is of several sites ({', '.join(scope)}); valid: name the order's "
            "site as the requester Organization's identifier (its site id or hl7_facility)",
            f"{path}.requester",
            code="required",
        )
    site, where = named
    if site not in token_sites:
        raise FhirError.one(
            403,
            f"this token may create orders for {', '.join(scope)} only; valid: an "
            "Organization of one of them, or a token of that site",
            where,
            code="forbidden",
        )
    return site


@dataclass(frozen=True, slots=True)
class Attribution:
    """The sites in force and the caller's token's sites: whose orders a request makes
    and sees. The default is a hub without sites and an unlimited token."""

    sites: SiteDirectory = field(default_factory=SiteDirectory)
    token_sites: frozenset[str] | None = None

    def order(self, sr: Mapping[str, Any], order: Order, path: str = "ServiceRequest") -> Order:
        """``order`` (mapped from ``sr``) with its site, its patient named with the site's
        issuer where it names none."""
        site = order_site(sr, self.sites, self.token_sites, path)
        return replace(order, site=site, patient=self.sites.patient_of(site, order.patient))

    def sees(self, site: str | None) -> bool:
        """Whether the caller may see or change an order of ``site`` (None: the hub's)."""
        return self.token_sites is None or (site is not None and site in self.token_sites)
