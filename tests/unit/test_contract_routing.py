"""Contracts and regulatory data in routing, as pure functions: the configuration's
``contracts:`` and ``regulatory:`` blocks compiled with the routes, decided with the use
counts given, and explained."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from broker.model.contract import Period, UseCharge
from broker.model.domain import Order, OrderSource
from broker.model.mode import Mode, ShadowCause
from config.schema import Settings, routing_rules
from routing import RuleSet, SkipReason, decide
from routing.explain import report
from tests.integration.test_routing import study

NOW = datetime(2026, 5, 10, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
CHEST = Order(source=OrderSource.HL7, accession_number="ACC1", department="胸外科")
ENT = Order(source=OrderSource.HL7, accession_number="ACC1", department="耳鼻喉科")


def _vendor(ae: str, **extra: Any) -> dict[str, Any]:
    transport = {"type": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": 104}
    return {"product": f"{ae} lung", "kind": "lung-nodule-ct", "transport": transport, **extra}


def _settings(
    contracts: dict[str, Any], vendors: dict[str, Any] | None = None, **top: Any
) -> Settings:
    return Settings.model_validate(
        {
            "site": {"name": "General", "timezone": "Asia/Shanghai"},
            "vendors": vendors or {"lunga": _vendor("LUNGA"), "lungb": _vendor("LUNGB")},
            "routes": [{"name": "chest", "when": {"modality": "CT"}, "send": ["lunga"]}],
            "contracts": contracts,
            **top,
        }
    )


PACKAGE = {
    "vendor": "lunga",
    "kind": "package",
    "quota": 3,
    "period": "month",
    "start": "2026-01-01",
    "end": "2026-12-31",
    "price": 9000,
    "currency": "CNY",
    "payer": "hospital",
    "price_code": "310000012",
    "province": "Zhejiang",
    "departments": ["胸外科", "呼吸内科"],
    "when_used_up": "fallback",
}


def _rules(**changes: Any) -> RuleSet:
    trial_b = {"vendor": "lungb", "kind": "trial", "quota": 100}
    return routing_rules(_settings({"a-2026": {**PACKAGE, **changes}, "b-trial": trial_b}))


def test_a_package_within_its_quota_sends_as_a_package_use() -> None:
    """The contract covers the study: the dispatch names the contract, its period and charge."""
    decision = decide(_rules(), study(), CHEST, NOW, used={"a-2026": 2})
    (dispatch,) = decision.dispatches
    assert dispatch.vendor == "lunga" and dispatch.terms.contract == "a-2026"
    assert dispatch.terms.charge is UseCharge.PACKAGE and dispatch.terms.period == "2026-05"
    assert dispatch.terms.counted and dispatch.terms.mode is Mode.LIVE


def test_a_package_used_up_falls_back_to_another_vendor_of_the_same_kind() -> None:
    """Used up with ``when_used_up: fallback``: the next vendor of the kind whose contract
    covers the study gets it, under its own contract; explain says why."""
    rules = _rules()
    decision = decide(rules, study(), CHEST, NOW, used={"a-2026": 3})
    (dispatch,) = decision.dispatches
    assert (dispatch.vendor, dispatch.instead_of) == ("lungb", "lunga")
    assert dispatch.terms.contract == "b-trial" and dispatch.terms.charge is UseCharge.TRIAL
    text = report(rules, study(), CHEST, NOW, used={"a-2026": 3}).text()
    assert "contract 'a-2026' (package, 3/3 used this month): used up" in text
    assert "fallback to lungb" in text
    again = decide(rules, study(), CHEST, NOW, used={"a-2026": 3}, delivered={("chest", "lungb")})
    assert not again.dispatches  # explained after the fact: lungb has its job already
    assert [s.reason for s in again.skipped] == [SkipReason.CONTRACT, SkipReason.ALREADY_DELIVERED]


def test_no_fallback_vendor_with_a_covering_contract_means_not_sent() -> None:
    """Fallback with the other vendor's trial used up too: nothing is sent, and why."""
    decision = decide(_rules(), study(), CHEST, NOW, used={"a-2026": 3, "b-trial": 100})
    assert not decision.dispatches
    (skip,) = decision.skipped
    assert skip.reason is SkipReason.CONTRACT
    assert "no other vendor of kind 'lung-nodule-ct'" in str(skip)


def _ordered_rules(fallback_to: Any) -> RuleSet:
    """lunga's package (used up: fallback), lungb of its kind and lungc of another kind on
    trials; the route names its fallback order."""
    vendors = {
        "lunga": _vendor("LUNGA"),
        "lungb": _vendor("LUNGB"),
        "lungc": _vendor("LUNGC", kind="chest-ct"),
    }
    route = {"name": "chest", "when": {"modality": "CT"}, "send": ["lunga"]}
    contracts = {
        "a-2026": PACKAGE,
        "b-trial": {"vendor": "lungb", "kind": "trial", "quota": 100},
        "c-trial": {"vendor": "lungc", "kind": "trial", "quota": 5},
    }
    settings = _settings(contracts, vendors, routes=[route | {"fallback_to": fallback_to}])
    return routing_rules(settings)


@pytest.mark.parametrize(
    "fallback_to", [["lungc", "lungb"], {"lunga": ["lungc", "lungb"]}], ids=["list", "per-vendor"]
)
def test_a_routes_fallback_order_is_tried_first_to_last(fallback_to: Any) -> None:
    """``fallback_to: [lungc, lungb]``: the used-up package falls back to lungc although
    lungb is of its kind (explain names the order); with lungc's trial used up too, to
    lungb; the package covering the study, to lunga itself."""
    rules = _ordered_rules(fallback_to)
    (dispatch,) = decide(rules, study(), CHEST, NOW, used={"a-2026": 3}).dispatches
    assert (dispatch.vendor, dispatch.instead_of) == ("lungc", "lunga")
    assert dispatch.terms.contract == "c-trial" and dispatch.terms.charge is UseCharge.TRIAL
    text = report(rules, study(), CHEST, NOW, used={"a-2026": 3}).text()
    assert "used up: fallback to lungc (fallback_to: lungc, lungb)" in text
    (second,) = decide(rules, study(), CHEST, NOW, used={"a-2026": 3, "c-trial": 5}).dispatches
    assert (second.vendor, second.terms.contract) == ("lungb", "b-trial")
    (own,) = decide(rules, study(), CHEST, NOW, used={"a-2026": 2}).dispatches
    assert (own.vendor, own.instead_of) == ("lunga", None)


def test_a_fallback_order_whose_vendors_all_refuse_sends_nothing() -> None:
    """Every vendor of ``fallback_to`` without a covering contract: not sent, and the skip
    names the route's order rather than the vendor's kind."""
    rules = _ordered_rules(["lungb"])
    decision = decide(rules, study(), CHEST, NOW, used={"a-2026": 3, "b-trial": 100})
    # lungc's trial would cover the study, but it is not in the route's order
    assert not decision.dispatches
    (skip,) = decision.skipped
    assert "none of lungb (the route's fallback_to) has a contract" in str(skip)


def test_a_fallback_order_names_known_vendors_of_the_route() -> None:
    """Unknown vendors, a vendor not on the route, a repeat and a vendor falling back to
    itself are configuration errors at their place."""
    route = {"name": "chest", "when": {"modality": "CT"}, "send": ["lunga"]}
    bad = [
        route | {"fallback_to": ["lungx"]},
        route | {"fallback_to": {"lungb": ["lunga"]}},
        route | {"fallback_to": ["lungb", "lungb"]},
        route | {"fallback_to": {"lunga": ["lunga"]}},
    ]
    wanted = [
        "unknown vendor 'lungx'",
        "'lungb' is not a vendor of this route; valid: lunga",
        "vendor 'lungb' is listed twice",
        "'lunga' cannot fall back to itself",
    ]
    for given, message in zip(bad, wanted, strict=True):
        with pytest.raises(ValidationError) as caught:
            _settings({}, routes=[given])
        assert message in str(caught.value)


@pytest.mark.parametrize("order", [ENT, None], ids=["other-department", "no-order"])
def test_a_department_not_allowed_is_not_sent_and_explain_says_why(order: Order | None) -> None:
    """A department outside ``departments`` (or no order to say) stops the delivery."""
    rules = _rules()
    decision = decide(rules, study(), order, NOW, used={})
    assert not decision.dispatches
    assert decision.skipped[0].reason is SkipReason.CONTRACT
    explained = report(rules, study(), order, NOW)
    assert "is not allowed (allowed: 胸外科, 呼吸内科)" in explained.text()
    assert "when_department_not_allowed: stop" in explained.text()
    assert explained.rows()[0]["fired"] is False


def test_outside_the_dates_the_action_applies() -> None:
    """Before the start (stop), after the end billed per use with an alert, or in shadow."""
    early = datetime(2025, 12, 31, 2, 0, tzinfo=UTC)
    assert not decide(_rules(), study(), CHEST, early).dispatches
    late = datetime(2027, 1, 2, 2, 0, tzinfo=UTC)
    (billed,) = decide(_rules(when_outside_dates="bill"), study(), CHEST, late).dispatches
    assert billed.terms.charge is UseCharge.PER_USE and not billed.terms.counted
    assert billed.terms.alert is not None and "expired (ended 2026-12-31)" in billed.terms.alert
    (shadow,) = decide(_rules(when_outside_dates="shadow"), study(), CHEST, late).dispatches
    assert shadow.terms.shadow is ShadowCause.CONTRACT and shadow.terms.charge is UseCharge.SHADOW


def _regulatory(**fields: Any) -> RuleSet:
    regulatory = {"nmpa_class": 3, "certificate": "国械注准20233210001", **fields}
    vendors = {"lunga": _vendor("LUNGA", regulatory=regulatory), "lungb": _vendor("LUNGB")}
    return routing_rules(_settings({}, vendors))


def test_an_expired_certificate_runs_in_shadow_unless_configured_live() -> None:
    """Expired or missing NMPA certificate: shadow mode; ``live_without_certificate``: live
    with an alert; a valid one: live."""
    (valid,) = decide(_regulatory(valid_until="2028-01-01"), study(), CHEST, NOW).dispatches
    assert valid.terms.mode is Mode.LIVE and valid.terms.alert is None
    (expired,) = decide(_regulatory(valid_until="2026-05-09"), study(), CHEST, NOW).dispatches
    assert expired.terms.shadow is ShadowCause.CERTIFICATE
    assert expired.terms.alert == "NMPA certificate 国械注准20233210001 expired 2026-05-09: " + (
        "shadow mode only"
    )
    (missing,) = decide(_regulatory(certificate=None), study(), CHEST, NOW).dispatches
    assert missing.terms.mode is Mode.SHADOW
    rules = _regulatory(valid_until="2026-05-09", live_without_certificate=True)
    (allowed,) = decide(rules, study(), CHEST, NOW).dispatches
    assert allowed.terms.mode is Mode.LIVE
    assert "live by configuration" in (allowed.terms.alert or "")


@pytest.mark.parametrize(
    ("action", "sent", "charge"),
    [
        ("stop_routing", False, None),
        ("mark_unbillable", True, "unbilled"),
        ("bill", True, "per_use"),
    ],
)
def test_a_billing_block_is_read_as_the_vendors_contract(
    action: str, sent: bool, charge: str | None
) -> None:
    """``billing: {trial_quota, when_quota_used}`` stays valid: a trial contract named after
    the vendor, its quota kept by routing, then stop, unbilled or billed per use."""
    billing = {"price": 30, "currency": "CNY", "trial_quota": 2, "when_quota_used": action}
    vendors = {"lunga": _vendor("LUNGA", billing=billing), "lungb": _vendor("LUNGB")}
    rules = routing_rules(_settings({}, vendors))
    (first,) = decide(rules, study(), None, NOW, used={"lunga": 1}).dispatches
    assert first.terms.contract == "lunga" and first.terms.charge is UseCharge.TRIAL
    after = decide(rules, study(), None, NOW, used={"lunga": 2}).dispatches
    assert bool(after) is sent
    if sent:
        assert after[0].terms.charge == UseCharge(charge)


def test_contract_configuration_errors_say_what_is_valid() -> None:
    """An unknown vendor (with a suggestion), billing beside a contract, a package without a
    quota, a price code without its province, a charge to no hl7 target: each refused with
    what would be valid."""
    with pytest.raises(ValidationError, match="unknown vendor 'lungaa'; did you mean 'lunga'"):
        _settings({"x": {**PACKAGE, "vendor": "lungaa"}})
    billing = {"lunga": _vendor("LUNGA", billing={"price": 1}), "lungb": _vendor("LUNGB")}
    with pytest.raises(ValidationError, match="move billing into contracts"):
        _settings({"x": PACKAGE}, billing)
    without = {k: v for k, v in PACKAGE.items() if k != "quota"}
    with pytest.raises(ValidationError, match="a package needs its quota"):
        _settings({"x": without})
    with pytest.raises(ValidationError, match="add province"):
        _settings({"x": {**PACKAGE, "province": None}})
    with pytest.raises(ValidationError, match="'hiss' is not an hl7 target; valid: none"):
        _settings({"x": {**PACKAGE, "charge_to": "hiss"}})


def test_quota_periods_have_their_own_counter_keys() -> None:
    """The counter key of a month, a year and a whole contract."""
    day = NOW.date()
    assert [p.key(day) for p in Period] == ["all", "2026-05", "2026"]
