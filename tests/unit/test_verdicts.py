"""Verdict links and roles as pure functions: a signed link carries its result, finding and
verdict until it expires; a changed byte or another secret is refused; readers see patient
data and give verdicts but do not act on jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.model.critical_link import AckClaim, AckLinkError, sign, verify
from broker.model.domain import PHI_ROLE, VERDICT_ROLE, Role
from broker.model.signed_links import LinkPurpose, read_link
from broker.model.verdicts import (
    Verdict,
    VerdictError,
    VerdictLink,
    VerdictLinks,
    read_verdict_link,
    sign_verdict_link,
)

SECRET = "s" * 40
NOW = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def test_a_signed_link_reads_back_until_it_expires() -> None:
    """The token gives back what was signed; after its expiry it is refused."""
    link = VerdictLink(12, 1, Verdict.REJECTED, NOW + timedelta(days=14))
    token = sign_verdict_link(SECRET, link)
    assert read_verdict_link(SECRET, token, NOW) == link
    with pytest.raises(VerdictError, match="expired"):
        read_verdict_link(SECRET, token, NOW + timedelta(days=14))


def test_a_changed_link_or_another_secret_is_refused() -> None:
    """Changing the payload (verdict, result) or the signature, signing the other verdict's
    payload with the stamp and signature of this one, or checking under another secret,
    fails the signature."""
    token = sign_verdict_link(SECRET, VerdictLink(12, 0, Verdict.ACCEPTED, NOW + timedelta(1)))
    other = sign_verdict_link(SECRET, VerdictLink(12, 0, Verdict.REJECTED, NOW + timedelta(1)))
    payload, rest = token.split(".", 1)
    for forged in (
        other.split(".", 1)[0] + "." + rest,
        ("A" if payload[0] != "A" else "B") + token[1:],
        token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:],  # a full 6-bit digit
        "",
    ):
        with pytest.raises(VerdictError, match="not valid"):
            read_verdict_link(SECRET, forged, NOW)
    with pytest.raises(VerdictError):
        read_verdict_link("t" * 40, token, NOW)


def test_one_signer_keeps_verdict_and_acknowledgement_links_apart() -> None:
    """Both links are made by one signer under one secret, but a token made for one
    purpose never reads as the other: a verdict token is not an acknowledgement token."""
    verdict = sign_verdict_link(SECRET, VerdictLink(7, 0, Verdict.ACCEPTED, NOW + timedelta(1)))
    ack = sign(AckClaim(7, "Dr. Li", 0), SECRET)
    assert verify(ack, SECRET, 3600) == AckClaim(7, "Dr. Li", 0)
    with pytest.raises(AckLinkError, match="not valid"):
        verify(verdict, SECRET, 3600)
    with pytest.raises(VerdictError, match="not valid"):
        read_verdict_link(SECRET, ack, NOW)
    payload, signed = read_link(SECRET, LinkPurpose.VERDICT, verdict)
    assert payload[:3] == [7, 0, "accepted"] and signed.tzinfo is not None


def test_links_of_a_result_name_each_finding_twice() -> None:
    """Each finding gets an accept and a reject link under the console's ``/v/`` path."""
    links = VerdictLinks(SECRET, "https://rb.example", days=3).for_result(7, 2, NOW)
    assert sorted(links) == [0, 1] and sorted(links[1]) == ["accepted", "rejected"]
    token = links[1]["rejected"].removeprefix("https://rb.example/console/v/")
    assert read_verdict_link(SECRET, token, NOW) == VerdictLink(
        7, 1, Verdict.REJECTED, NOW + timedelta(days=3)
    )


def test_readers_see_patient_data_and_give_verdicts_but_do_not_operate() -> None:
    """viewer < reader < operator < admin."""
    assert Role.READER.allows(VERDICT_ROLE) and Role.READER.allows(PHI_ROLE)
    assert not Role.VIEWER.allows(VERDICT_ROLE) and not Role.READER.allows(Role.OPERATOR)
    assert Role.OPERATOR.allows(Role.READER) and Role("Reader") is Role.READER
