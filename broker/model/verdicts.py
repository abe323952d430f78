"""What people and final reports say about AI findings: a radiologist's verdict, and how a
finding compares with the study's signed report. Pure: no I/O.

A finding is named by its result and its place in the result's findings (``finding_index``,
from 0, as in ``findings[0]`` of the JSON schema); its code as ``SYSTEM:VALUE``
(:func:`code_key`) is what statistics group by.

One-click links: :func:`sign_verdict_link` makes a token that carries a result, a finding, a
verdict and an expiry, signed by radbridge's one link signer (:mod:`.signed_links`) under
the link secret from the environment, so a notification can carry "accept" and "reject"
links that need no login; :func:`read_verdict_link` checks one (its signature first, then
its expiry).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from broker.model.domain import Code, CodedValue
from broker.model.errors import RadbridgeError
from broker.model.signed_links import LinkPurpose, SignedLinkError, read_link, sign_link


class Verdict(CodedValue):
    """A radiologist's judgement of one AI finding."""

    ACCEPTED = "accepted"
    """The finding is right."""
    REJECTED = "rejected"
    """The finding is wrong (a false positive, or a false negative of an absent finding)."""
    MODIFIED = "modified"
    """Right in substance, wrong in a detail (size, site, grade): ``corrected_value`` says."""


class VerdictSource(CodedValue):
    """Where a verdict was given."""

    API = "api"
    CONSOLE = "console"
    LINK = "link"


class VerdictError(RadbridgeError):
    """A verdict names a finding that does not exist, or a link that is not valid."""


def code_key(code: Code) -> str:
    """``SCT:1386000``: how statistics, keyword lists and stored verdicts name a finding code."""
    return f"{code.system}:{code.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FindingVerdict:
    """One verdict on one finding; every verdict is kept, the newest of a finding counts."""

    id: int
    result_id: int
    finding_index: int
    vendor: str | None
    code: str
    verdict: Verdict
    corrected_value: str | None
    comment: str | None
    actor: str
    source: VerdictSource
    at: datetime


@dataclass(frozen=True, slots=True)
class VerdictLink:
    """What a signed one-click link asks for."""

    result_id: int
    finding_index: int
    verdict: Verdict
    expires: datetime


def sign_verdict_link(secret: str, link: VerdictLink, *, at: datetime | None = None) -> str:
    """The token of a one-click link: result, finding, verdict and expiry, signed (stamped
    ``at``, default now)."""
    payload = [link.result_id, link.finding_index, link.verdict.value]
    return sign_link(secret, LinkPurpose.VERDICT, [*payload, int(link.expires.timestamp())], at=at)


def read_verdict_link(secret: str, token: str, now: datetime | None = None) -> VerdictLink:
    """The link a token carries; :class:`VerdictError` when it is forged, damaged or expired."""
    invalid = "this verdict link is not valid (damaged, or not made by radbridge)"
    try:
        payload, _signed = read_link(secret, LinkPurpose.VERDICT, token)
    except SignedLinkError as exc:
        raise VerdictError(invalid) from exc
    match payload:
        case [int(result), int(finding), str(verdict), int(expiry)] if verdict in set(Verdict):
            link = VerdictLink(
                result, finding, Verdict(verdict), datetime.fromtimestamp(expiry, UTC)
            )
        case _:
            raise VerdictError(invalid)
    if link.expires <= (now or datetime.now(UTC)):
        raise VerdictError("this verdict link has expired; give the verdict in the console")
    return link


@dataclass(frozen=True, slots=True, repr=False)
class VerdictLinks:
    """Makes the one-click links of a result's findings: ``{base}/console/v/{token}``."""

    secret: str
    base_url: str
    """radbridge's HTTP address as people reach it (``http.public_url``)."""
    days: int = 14

    def for_result(
        self, result_id: int, findings: int, now: datetime | None = None
    ) -> dict[int, dict[str, str]]:
        """Per finding (by index): an ``accepted`` and a ``rejected`` link, made as of ``now``
        (default: now): the same ``now``, the same links."""
        now = now or datetime.now(UTC)
        expires = now + timedelta(days=self.days)
        return {
            n: {
                v.value: f"{self.base_url}/console/v/"
                + sign_verdict_link(self.secret, VerdictLink(result_id, n, v, expires), at=now)
                for v in (Verdict.ACCEPTED, Verdict.REJECTED)
            }
            for n in range(findings)
        }
