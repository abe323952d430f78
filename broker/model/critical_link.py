"""Signed acknowledgement links: one case, one contact, expiring (itsdangerous, HMAC-SHA256).

A notification carries ``{link_base}/console/critical/ack/{token}``; the token
names the case and the contact it was sent to, is signed with
``critical.link_secret`` (from the environment only) and expires after
``critical.link_valid_for``. Opening the link shows the case and asks for the
name of the person who acknowledges; only the POST of that form acknowledges
(messengers open links to preview them). A token acknowledges its own case only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from broker.model.errors import RadbridgeError

#: Keeps these tokens apart from anything else the same secret might sign.
SALT = "radbridge.critical.ack"
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


def _serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        secret, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )


def sign(claim: AckClaim, secret: str) -> str:
    """A URL-safe token for ``claim``, stamped now."""
    return str(_serializer(secret).dumps([claim.case_id, claim.contact, claim.level]))


def verify(token: str, secret: str, max_age: float) -> AckClaim:
    """The claim of a valid token no older than ``max_age`` seconds; else :class:`AckLinkError`."""
    try:
        case_id, contact, level = _serializer(secret).loads(token, max_age=int(max_age))
    except SignatureExpired as exc:
        raise AckLinkError("this acknowledgement link has expired") from exc
    except (BadSignature, ValueError, TypeError) as exc:
        raise AckLinkError("this acknowledgement link is not valid") from exc
    if not isinstance(case_id, int) or not isinstance(contact, str) or not isinstance(level, int):
        raise AckLinkError("this acknowledgement link is not valid")
    return AckClaim(case_id, contact, level)


def link(base: str, token: str) -> str:
    """The full link for ``token`` under ``base`` (radbridge's public HTTP address)."""
    return f"{base.rstrip('/')}{LINK_PATH}{token}"
