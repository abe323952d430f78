"""Shadow mode (silent trials): configuration, write-back kept from the targets and the
notifications, promotion by the configuration in force, usage counted as trial and never
billed, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from broker.engine.plan import FixedPlan, FixedPlans
from broker.engine.writeback_stage import WritebackStage
from broker.model.contract import UseCharge
from broker.model.jobs import JobState
from broker.model.mode import Mode, ShadowCause, effective_shadow
from broker.model.writeback import WEBHOOK_TARGET, TargetSpec
from broker.runtime.billing import Accounting
from broker.runtime.snapshot import build_targets, configured_shadow
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.results import ResultStore
from broker.store.usage import UsageStore
from config.schema import Settings, routing_rules
from routing import decide
from routing.explain import report
from tests.databases import DATABASES, empty_database
from tests.integration.test_routing import study
from tests.integration.test_usage_audit import T0, _sent_job, _study
from tests.writeback_data import Scene

VENDOR = {
    "product": "CT lung nodule",
    "transport": {"type": "dicom", "ae_title": "LUNGAI", "host": "127.0.0.1", "port": 104},
}


def _settings(vendor_mode: str = "live", route_mode: str = "live", **billing: Any) -> Settings:
    vendor = {**VENDOR, "mode": vendor_mode} | ({"billing": billing} if billing else {})
    route = {"name": "chest", "when": {"modality": "CT"}, "send": ["lungai"], "mode": route_mode}
    return Settings.model_validate(
        {
            "site": {"name": "General", "timezone": "Asia/Shanghai"},
            "vendors": {"lungai": vendor},
            "routes": [route],
        }
    )


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def test_shadow_cause_follows_the_configuration_in_force_other_causes_stay() -> None:
    """A configuration shadow is re-read when the result completes (a reload to live
    promotes); a contract or certificate shadow stays with the job; a route or its vendor
    in shadow is enough."""
    assert effective_shadow(None, configured=False) is None
    assert effective_shadow(None, configured=True) is ShadowCause.CONFIGURATION
    assert effective_shadow(ShadowCause.CONFIGURATION, configured=False) is None
    assert effective_shadow(ShadowCause.CONTRACT, configured=False) is ShadowCause.CONTRACT
    assert effective_shadow(ShadowCause.CERTIFICATE, configured=True) is ShadowCause.CONFIGURATION
    assert configured_shadow(_settings("shadow"), "chest", "lungai")
    assert configured_shadow(_settings(route_mode="shadow"), "chest", "lungai")
    assert not configured_shadow(_settings(), "chest", "lungai")
    assert not configured_shadow(_settings("shadow"), "chest", "gone")  # no longer configured
    assert _settings("SHADOW").vendors["lungai"].mode is Mode.SHADOW


def test_a_shadow_route_makes_shadow_deliveries_that_take_no_quota() -> None:
    """A route in ``mode: shadow`` decides shadow deliveries (configuration) for a live vendor
    whose contract covers the study: never billed, not counted in the quota, and explain
    says nothing is written back; the same vendor on a live route stays live."""
    vendor = {**VENDOR}
    settings = Settings.model_validate(
        {
            "site": {"name": "General", "timezone": "Asia/Shanghai"},
            "vendors": {"lungai": vendor},
            "contracts": {"p": {"vendor": "lungai", "kind": "package", "quota": 5, "price": 1}},
            "routes": [
                {"name": "trial", "when": {"modality": "CT"}, "send": ["lungai"], "mode": "shadow"}
            ],
        }
    )
    now = datetime(2026, 5, 10, 2, 0, tzinfo=UTC)
    (dispatch,) = decide(routing_rules(settings), study(), None, now).dispatches
    assert dispatch.terms.shadow is ShadowCause.CONFIGURATION
    assert dispatch.terms.charge is UseCharge.SHADOW and not dispatch.terms.counted
    explained = report(routing_rules(settings), study(), None, now).text()
    assert "shadow mode: nothing written back" in explained
    live = settings.model_copy(
        update={"routes": [settings.routes[0].model_copy(update={"mode": Mode.LIVE})]}
    )
    (dispatch,) = decide(routing_rules(live), study(), None, now).dispatches
    assert dispatch.terms.shadow is None and dispatch.terms.counted


def test_an_unknown_mode_fails_at_load_naming_the_valid_ones() -> None:
    """``mode: trial`` is refused with the field and the modes there are."""
    with pytest.raises(ValueError, match=r"vendors\.lungai\.mode[\s\S]*'live' or 'shadow'"):
        _settings("trial")


def test_a_shadow_result_is_kept_from_targets_and_notifications_until_promoted(
    engine: Engine, tmp_path: Path
) -> None:
    """An urgent result of a shadow vendor makes no write-back, no webhook and no RIS status
    (the job is done, the result stays in the store); the same job kind after a reload to
    live is written back; a contract's shadow stays whatever the configuration says."""
    targets = {
        "ris": TargetSpec("ris", "hl7", {"host": "127.0.0.1", "port": 9, "timeout": 1}),
        WEBHOOK_TARGET: TargetSpec(WEBHOOK_TARGET, "webhook", {"url": "http://127.0.0.1:9/h"}),
    }

    def stage(shadows: frozenset[str]) -> WritebackStage:
        plan = FixedPlan(
            targets=targets,
            writers=build_targets(targets),
            routes={"head-ct": ("ris",)},
            ris_status="ris",
            shadows=shadows,
        )
        return WritebackStage(engine, FixedPlans(plan), results=ResultStore(engine).get)

    jobs, deliveries = JobStore(engine), DeliveryStore(engine)
    shadow_scene = Scene.make(engine, tmp_path, "1")
    job = shadow_scene.job()
    result_id = shadow_scene.result(job, urgent=True, sr=False)
    assert stage(frozenset({"ichai"})).schedule(result_id) == []
    assert jobs.get(job.id).state is JobState.DONE
    assert deliveries.for_job(job.id, kind=None) == []
    assert ResultStore(engine).get(result_id).findings is not None

    promoted = Scene.make(engine, tmp_path, "2")
    routed_shadow = jobs.create(
        promoted.study_uid, "ichai", route="head-ct", shadow=ShadowCause.CONFIGURATION
    ).job
    assert routed_shadow.shadow is ShadowCause.CONFIGURATION
    jobs.claim(routed_shadow.id)
    jobs.finish(routed_shadow.id, [JobState.SENT, JobState.AWAITING_RESULT])
    made = stage(frozenset()).schedule(promoted.result(routed_shadow, urgent=True, sr=False))
    assert sorted((d.target, d.kind.value) for d in made) == [
        ("notifications.webhook", "notify"),
        ("ris", "result"),
        ("ris", "status"),
    ]

    contract = Scene.make(engine, tmp_path, "3")
    by_contract = jobs.create(
        contract.study_uid, "ichai", route="head-ct", shadow=ShadowCause.CONTRACT
    ).job
    jobs.claim(by_contract.id)
    jobs.finish(by_contract.id, [JobState.SENT, JobState.AWAITING_RESULT])
    assert stage(frozenset()).schedule(contract.result(by_contract, sr=False)) == []


def test_shadow_usage_is_trial_never_billed_and_outside_the_quota(engine: Engine) -> None:
    """A study sent to a shadow vendor (or by a shadow job) is a trial row, not billable, that
    leaves the trial quota whole: the next live study is still the quota's first."""
    shadow = _settings("shadow", price="30", currency="CNY", trial_quota=1)
    live = _settings(price="30", currency="CNY", trial_quota=1)
    rows = []
    for n, settings in enumerate((shadow, live, live)):
        uid = f"1.2.3.{n}"
        _study(engine, uid)
        entry = Accounting(engine, lambda s=settings: s).record(_sent_job(engine, uid), T0)
        assert entry is not None
        rows.append((entry.shadow, entry.trial, entry.billable))
    assert rows == [(True, True, False), (False, True, False), (False, False, True)]
    [line] = UsageStore(engine).report(date(2024, 5, 2), date(2024, 5, 2))
    assert (line.trial, line.billable, str(line.amount)) == (2, 1, "30")
