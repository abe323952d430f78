"""Settings of a regional hub's sites: the ``sites`` block.

```yaml
sites:
  township-a:
    name: Township A Health Centre
    timezone: Asia/Shanghai
    senders: [{ae_title: SITEA_CT, host: 10.8.1.0/24}]
    hl7_facility: TWA
    issuer: TWA_PID
    targets:
      pacs: {type: dicom, ae_title: TWA_PACS, host: 10.8.1.5, port: 104}
routes:
  - {name: chest-ct, when: {modality: CT}, send: [lungai], write_back: [site.pacs]}
```

A study is the site's whose sender (calling AE title, from an address of ``host``)
sent it; an order the site's whose MSH-4 is its ``hl7_facility``. A site's senders
are allowed in without being listed under ``dicom.peers``. A route's ``site.NAME``
write-back is the originating site's target ``NAME`` (:mod:`broker.model.sites`).
Without ``sites`` everything is the one implicit site, as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import Annotated, Any

from pydantic import Field, IPvAnyNetwork, field_validator

from broker.model.sites import SITE_TARGET_PREFIX, SiteDirectory, SiteInfo, SiteSender
from config.base import AETitle, Strict
from config.plugins import TargetBlock

SiteId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,23}$")]
"""A site's id: lower-case letters, digits, ``-`` and ``_`` (it names the site in the
store, in tokens' scopes and in reports; at most 24 characters)."""
SiteTargetName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$")]
"""A site target's name (at most 32 characters: ``site.ID.NAME`` names it in the store)."""

Hl7Name = Annotated[str, Field(min_length=1, max_length=180, pattern=r"^[^|^~\\&\r\n]+$")]


class Sender(Strict):
    """A modality or PACS of the site: its calling AE title, from an address or network."""

    ae_title: AETitle
    host: IPvAnyNetwork

    @field_validator("host", mode="before")
    @classmethod
    def _address_or_network(cls, value: Any) -> Any:
        try:
            ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise ValueError(
                f"not an address or network: {value!r}; valid: 10.8.1.7 or 10.8.1.0/24 "
                "(a sender is told apart by where it connects from, so no host names)"
            ) from None
        return ipaddress.ip_network(str(value), strict=False)


class SiteSettings(Strict):
    """One sending institution of a hub."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    timezone: str | None = None
    """Its clock; None: the hub's (``site.timezone``)."""
    senders: list[Sender] = Field(default_factory=list)
    hl7_facility: Hl7Name | None = None
    """MSH-4 of its RIS's messages: orders with it are the site's."""
    issuer: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """Issuer of its patient IDs (IssuerOfPatientID, PID-3.4)."""
    targets: dict[SiteTargetName, TargetBlock] = Field(default_factory=dict)
    """Its own write-back targets; routes name them ``site.NAME``."""
    critical_contacts: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    """The escalation list (of ``critical.lists``) its studies' critical cases use, unless
    their route names one."""


def check_sites(sites: dict[str, SiteSettings]) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems that make sites ambiguous: one sender or facility claimed by two sites."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    facilities: dict[str, str] = {}
    senders: dict[tuple[str, str], str] = {}
    for site_id, site in sites.items():
        facility = site.hl7_facility
        if facility is not None:
            if facility in facilities:
                problems.append(
                    (
                        ("sites", site_id, "hl7_facility"),
                        f"hl7_facility '{facility}' is site '{facilities[facility]}''s already; "
                        "valid: one MSH-4 per site",
                    )
                )
            facilities.setdefault(facility, site_id)
        for i, sender in enumerate(site.senders):
            for (ae, network), owner in senders.items():
                if ae == sender.ae_title and ipaddress.ip_network(network).overlaps(sender.host):
                    problems.append(
                        (
                            ("sites", site_id, "senders", i),
                            f"sender {sender.ae_title} from {sender.host} overlaps site "
                            f"'{owner}''s sender from {network}; valid: each calling AE title "
                            "and address belongs to one site",
                        )
                    )
            senders.setdefault((sender.ae_title, str(sender.host)), site_id)
    return problems


def site_target_names(sites: dict[str, SiteSettings]) -> tuple[str, ...]:
    """The ``site.NAME`` entries routes may write back to: each NAME some site has."""
    return tuple(
        sorted({f"{SITE_TARGET_PREFIX}{name}" for site in sites.values() for name in site.targets})
    )


def site_directory(
    sites: dict[str, SiteSettings],
    default_timezone: str,
    *,
    refuse_unknown_facility: bool = False,
    hub_facilities: Collection[str] = (),
) -> SiteDirectory:
    """The sites as intake and write-back use them (``refuse_unknown_facility`` and
    ``hub_facilities`` from the ``hl7`` block)."""
    return SiteDirectory(
        tuple(
            SiteInfo(
                id=site_id,
                name=site.name,
                timezone=site.timezone or default_timezone,
                senders=tuple(SiteSender(s.ae_title, s.host) for s in site.senders),
                hl7_facility=site.hl7_facility,
                issuer=site.issuer,
                targets=tuple(site.targets),
            )
            for site_id, site in sites.items()
        ),
        refuse_unknown_facility=refuse_unknown_facility,
        hub_facilities=frozenset(hub_facilities),
    )
