"""Contracts per site on SQLite and PostgreSQL: a contract limited to sites, a package each
site counts apart, routing (and so explain) naming the site's contract, and the contracts'
state per site (``GET /api/v1/contracts``, the console's usage page)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from broker.runtime.contracts import ContractDesk, contract_statuses, contract_use
from broker.store.contracts import ContractStore
from config.schema import Settings, routing_rules
from routing import Decision, SkipReason, decide
from tests.databases import DATABASES, empty_database
from tests.integration.test_routing import study

T0 = datetime(2026, 5, 10, 2, 0, tzinfo=UTC)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _config(**contracts: dict[str, Any]) -> dict[str, Any]:
    def vendor(ae: str) -> dict[str, Any]:
        transport = {"type": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": 104}
        return {"product": f"{ae} lung", "kind": "lung", "transport": transport}

    return {
        "site": {"name": "County Hub", "timezone": "Asia/Shanghai"},
        "sites": {
            "township-a": {"name": "Township A"},
            "township-b": {"name": "Township B"},
        },
        "vendors": {"lungai": vendor("LUNGA"), "lungb": vendor("LUNGB")},
        "routes": [{"name": "chest", "when": {"modality": "CT"}, "send": ["lungai"]}],
        "contracts": contracts,
    }


SITE_A_PACKAGE = {
    "vendor": "lungai",
    "kind": "package",
    "quota": 1,
    "sites": ["township-a"],
    "when_used_up": "fallback",
}
REGIONAL_PACKAGE = {"vendor": "lungai", "kind": "package", "quota": 1, "per_site": True}


def test_each_sites_contract_and_quota_decide_its_studies(engine: Engine) -> None:
    """Site A's own package (quota 1, then fallback to lungb) is used for site A's studies;
    the regional package counted per site gives site B and the hub one use each: site B's
    second study is not sent, naming the regional contract and site B; the counters are
    per site, and the contracts' state lists the regional package once per site."""
    settings = Settings.model_validate(
        _config(**{"lung-a": SITE_A_PACKAGE, "lung-regional": REGIONAL_PACKAGE})
    )
    rules = routing_rules(settings)
    store = ContractStore(engine)

    def route(uid: str, site: str | None) -> Decision:
        subject = replace(study(), study_uid=uid, site=site)
        return ContractDesk(store).route(
            uid, rules, T0, lambda used: decide(rules, subject, None, T0, used=used), site=site
        )

    [a1] = route("1.1", "township-a").dispatches
    assert (a1.vendor, a1.terms.contract) == ("lungai", "lung-a")
    a2 = route("1.2", "township-a")
    assert [(d.vendor, d.instead_of) for d in a2.dispatches] == [("lungb", "lungai")]
    assert "contract 'lung-a' (package, 1/1 used): used up" in a2.skipped[0].detail
    [b1] = route("2.1", "township-b").dispatches
    assert (b1.terms.contract, b1.terms.period) == ("lung-regional", "all@township-b")
    b2 = route("2.2", "township-b")
    assert b2.dispatches == ()
    assert [s.reason for s in b2.skipped] == [SkipReason.CONTRACT]
    assert "'lung-regional' (package, 1/1 used at township-b): used up" in b2.skipped[0].detail
    [hub] = route("3.1", None).dispatches
    assert (hub.terms.contract, hub.terms.period) == ("lung-regional", "all@")

    assert contract_use(store, rules, T0) == {
        "lung-a": 1,
        "lung-regional@township-b": 1,
        "lung-regional@": 1,
    }
    shown = {
        (s.terms.name, s.site): (s.used, s.remaining)
        for s in contract_statuses(settings, store, T0)
    }
    assert shown == {
        ("lung-a", None): (1, 0),
        ("lung-regional", "township-a"): (0, 1),
        ("lung-regional", "township-b"): (1, 0),
        ("lung-regional", "County Hub"): (1, 0),
    }
    only_b = contract_statuses(settings, store, T0, frozenset({"township-b"}))
    assert [(s.terms.name, s.site) for s in only_b] == [("lung-regional", "township-b")]


def test_a_contract_of_other_sites_does_not_cover_a_study() -> None:
    """A product whose only contract is site A's is not sent site B's study (its
    when_site_not_allowed: stop), and explain says which sites it covers; a contract may
    name only configured sites, and per_site needs a quota."""
    rules = routing_rules(Settings.model_validate(_config(**{"lung-a": SITE_A_PACKAGE})))
    decision = decide(rules, replace(study(), site="township-b"), None, T0, used={})
    assert decision.dispatches == ()
    assert "site 'township-b' is not covered (sites: township-a)" in decision.skipped[0].detail
    unknown = {**SITE_A_PACKAGE, "sites": ["township-x"]}
    with pytest.raises(ValidationError, match="unknown site 'township-x'"):
        Settings.model_validate(_config(**{"lung-a": unknown}))
    with pytest.raises(ValidationError, match="per_site counts a quota per site"):
        Settings.model_validate(
            _config(x={"vendor": "lungai", "kind": "per_use", "per_site": True})
        )
