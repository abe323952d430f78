"""Signed acknowledgement links: one case, one contact, expiring (:mod:`.signed_links`).

A notification carries ``{link_base}/console/critical/ack/{token}``; the token
names the case and the contact it was sent to, is signed with radbridge's link
secret (``http.link_secret``, from the environment only; the older
``critical.link_secret`` is still read) and expires after ``critical.link_valid_for``.
Opening the link shows the case and asks for the name of the person who acknowledges;
only the POST of that form acknowledges (messengers open links to preview them). A token
acknowledges its own case only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.model.errors import RadbridgeError
from broker.model.signed_links import LinkPurpose, SignedLinkError, read_link, sign_link

#: Where the console serves the link (under the console's mount point).
LINK_PATH = "/console/critical/ack/"


class AckLinkError(RadbridgeError):
    """A link that is not valid: altered, signed with another secret, or expired."""


@dataclass(frozen=True, slots=True)
class AckClaim:
    """What a valid token says: the case, and the contact (name, level) it was sent to."""

    case_id: int
    contact: str
    level: int


def sign(claim: AckClaim, secret: str, *, at: datetime | None = None) -> str:
    """A URL-safe token for ``claim``, stamped ``at`` (default now)."""
    payload = [claim.case_id, claim.contact, claim.level]
    return sign_link(secret, LinkPurpose.CRITICAL_ACK, payload, at=at)


def verify(token: str, secret: str, max_age: float) -> AckClaim:
    """The claim of a valid token no older than ``max_age`` seconds; else :class:`AckLinkError`."""
    try:
        payload, _signed = read_link(secret, LinkPurpose.CRITICAL_ACK, token, max_age=max_age)
    except SignedLinkError as exc:
        if exc.expired:
            raise AckLinkError("this acknowledgement link has expired") from exc
        raise AckLinkError("this acknowledgement link is not valid") from exc
    match payload:
        case [int(case_id), str(contact), int(level)]:
            return AckClaim(case_id, contact, level)
    raise AckLinkError("this acknowledgement link is not valid")


def link(base: str, token: str) -> str:
    """The full link for ``token`` under ``base`` (radbridge's public HTTP address)."""
    return f"{base.rstrip('/')}{LINK_PATH}{token}"
