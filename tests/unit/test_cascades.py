"""Cascades as pure routing: a route may read findings of earlier results of the same study
(``result.<vendor or route>.finding.<code>``); it waits while that result is not complete,
fires when the finding is present, and stops (not matched, with the failing condition)
when it is absent."""

from __future__ import annotations

import pytest

from broker.model.errors import RoutingError
from routing import Outcome, RouteStatus, RuleError, compile_routes, decide, explain, parse_when
from tests.integration.test_routing import NOW, route, series, study

BLEED = "1386000"
ROUTES = [
    route("head-ct-bleed", {"modality": "CT"}, ("triage",)),
    route(
        "bleed-volume",
        {"modality": "CT", f"result.triage.finding.{BLEED}": "present"},
        ("volume",),
    ),
]
RULES = compile_routes(ROUTES, vendor_kinds={"triage": None, "volume": None})
HEAD = study(series(1, body_part="HEAD"))


def test_a_cascade_waits_for_the_earlier_result_then_fires_on_a_present_finding() -> None:
    """No triage result yet: the triage route fires, the cascade waits for it; once the
    triage reports the bleed present the cascade sends to the volume product, and the
    triage (already delivered) is not sent again."""
    first = decide(RULES, HEAD, None, NOW)
    assert [d.vendor for d in first.dispatches] == ["triage"]
    waiting = first.status_of("bleed-volume")
    assert waiting.status is RouteStatus.WAITING_FOR_RESULT and waiting.waiting_for == ("triage",)

    positive = {"triage": {BLEED: True}, "head-ct-bleed": {BLEED: True}}
    again = decide(
        RULES, HEAD, None, NOW, delivered={("head-ct-bleed", "triage")}, earlier=positive
    )
    assert [(d.route, d.vendor) for d in again.dispatches] == [("bleed-volume", "volume")]


def test_a_negative_triage_stops_the_cascade_and_explain_says_where() -> None:
    """The triage reports the bleed absent (or does not report it): the cascade does not
    match, nothing new is sent, and explain names the failing condition and the result it
    read."""
    for earlier in ({"triage": {BLEED: False}}, {"triage": {"other": True}}):
        decision = decide(
            RULES, HEAD, None, NOW, delivered={("head-ct-bleed", "triage")}, earlier=earlier
        )
        assert decision.dispatches == () and decision.outcome is Outcome.NOTHING_NEW
        assert decision.status_of("bleed-volume").status is RouteStatus.NOT_MATCHED
    _, routes = explain(
        RULES, HEAD, None, NOW, delivered={("head-ct-bleed", "triage")}, earlier=earlier
    )
    [cascade] = [r for r in routes if r.route == "bleed-volume"]
    assert cascade.failure is not None and f"result.triage.finding.{BLEED}" in str(cascade.failure)
    assert "absent" in str(cascade.failure)
    assert cascade.notes == ("cascade: reads the result of triage",)


def test_a_cascade_on_a_route_name_and_a_failing_image_condition_does_not_wait() -> None:
    """A result is found by its route's name too; a cascade whose other conditions fail does
    not wait for anything (it simply does not match)."""
    rules = compile_routes(
        [
            *ROUTES[:1],
            route(
                "mr-only",
                {"modality": "MR", f"result.head-ct-bleed.finding.{BLEED}": "present"},
                ("volume",),
            ),
        ],
        vendor_kinds={"triage": None, "volume": None},
    )
    assert decide(rules, HEAD, None, NOW).status_of("mr-only").status is RouteStatus.NOT_MATCHED


def test_result_fields_are_checked_at_load() -> None:
    """A malformed result field, a value other than present/absent and a name that is
    neither a vendor nor a route are refused, saying what is valid."""
    with pytest.raises(RuleError, match=r"result\.<vendor or route>\.finding\.<code>"):
        parse_when({"result.triage.abnormal": "present"})
    with pytest.raises(RuleError, match="valid: present, absent"):
        parse_when({"result.triage.finding.abnormal": "yes"})
    with pytest.raises(RoutingError, match=r"reads the result of 'triag'.*valid: .*triage"):
        compile_routes(
            [route("c", {"result.triag.finding.x": "present"}, ("volume",))],
            vendor_kinds={"triage": None, "volume": None},
        )
