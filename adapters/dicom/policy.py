"""Who may associate: called AE titles, and the calling AE + address allow-list.

Returns the A-ASSOCIATE-RJ (result, source, reason) for a refused request,
with the reasons of DICOM PS3.8 Table 9-21. How many may associate at once is
the slot board's to say (:mod:`adapters.dicom.slots`).
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass, field

from broker.model.sites import SiteDirectory
from config.schema import Settings


class Reject(tuple[int, int, int], enum.Enum):
    """A-ASSOCIATE-RJ result, source and reason."""

    CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
    CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)
    LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


def _addresses(host: str) -> frozenset[str]:
    """The IP addresses a configured host stands for (a name is resolved once)."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        return frozenset(str(info[4][0]) for info in infos)


@dataclass(frozen=True)
class AssociationPolicy:
    """``peers`` from ``dicom.peers``; a site's senders (``sites``) are allowed as well."""

    called_ae_titles: frozenset[str]
    allow_any_peer: bool
    peers: dict[str, frozenset[str] | None]
    sites: SiteDirectory = field(default_factory=SiteDirectory)

    @classmethod
    def from_settings(cls, settings: Settings) -> AssociationPolicy:
        dicom = settings.dicom
        peers: dict[str, frozenset[str] | None] = {}
        for peer in dicom.peers:
            allowed = _addresses(peer.host) if peer.host else None
            known = peers.get(peer.ae_title, frozenset())
            peers[peer.ae_title] = None if allowed is None or known is None else known | allowed
        return cls(
            called_ae_titles=frozenset(dicom.ae_titles),
            allow_any_peer=dicom.allow_any_peer,
            peers=peers,
            sites=settings.site_directory(),
        )

    def check(self, called_ae: str, calling_ae: str, address: str) -> Reject | None:
        """Why this association request is refused, or None to accept it."""
        if called_ae.strip() not in self.called_ae_titles:
            return Reject.CALLED_AE_NOT_RECOGNIZED
        if not self.allow_any_peer and self.sites.for_sender(calling_ae, address) is None:
            if calling_ae.strip() not in self.peers:
                return Reject.CALLING_AE_NOT_RECOGNIZED
            allowed = self.peers[calling_ae.strip()]
            if allowed is not None and address not in allowed:
                return Reject.CALLING_AE_NOT_RECOGNIZED
        return None
