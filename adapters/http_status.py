"""One verdict on an HTTP answer, for every transport and target that speaks HTTP.

The dicomweb and http vendor transports and the dicomweb, fhir and webhook
write-back targets all ask the same question of an answer: delivered, worth
another try later, or refused for good? :func:`verdict` answers it once:

- 2xx: delivered (a transport may still read the body, as STOW-RS does);
- 408 Request Timeout, 425 Too Early, 429 Too Many Requests, and every 5xx:
  retry with backoff (the peer is busy, down or restarting);
- everything else (1xx, redirects, other 4xx): refused. A redirect is not
  followed: a streamed body cannot be sent again, and credentials must not
  go to an address nobody configured. 401 and 403 mean wrong credentials.

Connection errors and timeouts never reach a status: :func:`failure` words
them, and they are always worth another try.
"""

from __future__ import annotations

import enum
from urllib.parse import urlsplit

import httpx

#: 4xx statuses that mean "not now" rather than "never".
RETRYABLE_4XX = frozenset({408, 425, 429})
#: Characters of the peer's answer kept in an error message.
ANSWER_CHARS = 300


class Verdict(enum.Enum):
    """What an HTTP status means for the delivery that got it."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


def verdict(status: int) -> Verdict:
    """The verdict on ``status`` (see the module docstring)."""
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in RETRYABLE_4XX or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.REFUSED


def answered(what: str, response: httpx.Response, *, body: bool = True) -> str:
    """``"{what} answered 503 Service Unavailable (Retry-After: 5): …"`` for an error message.

    Names where a redirect pointed, the ``Retry-After`` a busy peer asked
    for, a hint for 401/403, and (with ``body``) the start of what the peer said.
    """
    code = response.status_code
    text = f"{what} answered {code} {response.reason_phrase}".rstrip()
    if code in (401, 403):
        text += " (check the credentials)"
    if 300 <= code < 400:
        text += f" to {response.headers.get('Location', '?')} (redirects are not followed)"
    retry_after = response.headers.get("Retry-After")
    if retry_after and verdict(code) is Verdict.RETRY:
        text += f" (Retry-After: {retry_after})"
    said = response.text[:ANSWER_CHARS].strip() if body and not response.is_success else ""
    return f"{text}: {said}" if said else text


def failure(what: str, error: httpx.HTTPError, timeout: float) -> str:
    """Words for a request that got no answer: a timeout or a connection problem."""
    if isinstance(error, httpx.TimeoutException):
        return f"{what} timed out after {timeout:g} s ({type(error).__name__})"
    return f"{what} failed: {type(error).__name__}: {error or 'connection lost'}"


def url_endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) an http(s) URL connects to; None without a host."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
