"""Signed links: pages people open from a message without logging in, one signer for all.

A link's token is URL-safe: its payload (JSON), the time it was signed, and an
HMAC-SHA256 signature (itsdangerous) under the secret ``http.link_secret`` (from the
environment only: ``RADBRIDGE_HTTP__LINK_SECRET``) and the link's
:class:`LinkPurpose`, so a token made for one purpose never opens a page of another,
whatever it carries. Two purposes use it: the one-click verdict links of notifications
(:mod:`broker.model.verdicts`) and the acknowledgement links of critical results
(:mod:`broker.model.critical_link`). A changed byte, another secret or another purpose
fails the signature; ``max_age`` (seconds since signing) bounds how long a token is
taken. Pure: no I/O.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import UTC, datetime
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from broker.model.errors import RadbridgeError

#: The shortest secret links are signed with.
MIN_SECRET = 32


class LinkPurpose(enum.StrEnum):
    """What a signed link is for (the signer's salt)."""

    VERDICT = "radbridge.verdict"
    """A radiologist's verdict on one AI finding (``/console/v/TOKEN``)."""
    CRITICAL_ACK = "radbridge.critical.ack"
    """The acknowledgement of a critical result by one contact (``/console/critical/ack/``)."""


class SignedLinkError(RadbridgeError):
    """A token that is not valid (altered, another secret or purpose), or has expired."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def _serializer(
    secret: str, purpose: LinkPurpose, at: datetime | None = None
) -> URLSafeTimedSerializer:
    signer: type[TimestampSigner] = TimestampSigner
    if at is not None:
        stamp = int(at.timestamp())

        class _Stamped(TimestampSigner):
            def get_timestamp(self) -> int:
                return stamp

        signer = _Stamped
    return URLSafeTimedSerializer(
        secret, salt=purpose.value, signer=signer, signer_kwargs={"digest_method": hashlib.sha256}
    )


def sign_link(
    secret: str, purpose: LinkPurpose, payload: list[Any], *, at: datetime | None = None
) -> str:
    """A URL-safe token carrying ``payload`` (JSON values), stamped ``at`` (default now): the
    same payload stamped at the same second makes the same token, so a message sent again
    (a retry) carries the same link."""
    return str(_serializer(secret, purpose, at).dumps(payload))


def read_link(
    secret: str, purpose: LinkPurpose, token: str, *, max_age: float | None = None
) -> tuple[list[Any], datetime]:
    """The payload of a valid token and when it was signed; :class:`SignedLinkError` when
    it is altered, made with another secret or purpose, or older than ``max_age`` s."""
    try:
        payload, signed = _serializer(secret, purpose).loads(
            token, max_age=None if max_age is None else int(max_age), return_timestamp=True
        )
    except SignatureExpired as exc:
        raise SignedLinkError("the link has expired", expired=True) from exc
    except (BadSignature, ValueError, TypeError) as exc:
        raise SignedLinkError("the link is not valid") from exc
    if not isinstance(payload, list):
        raise SignedLinkError("the link is not valid")
    return payload, signed.astimezone(UTC)
