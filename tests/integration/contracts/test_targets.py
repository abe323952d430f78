"""The write-back target contract: every registered target type passes the same suite.

Each test runs once per name in :data:`broker.model.target.TARGETS`, against
the type's real peer from :mod:`tests.integration.contracts.kits` (storescp,
Orthanc's DICOMweb, an MLLP RIS, a FHIR receiver, a webhook receiver), with
one completed result of a real store. A target type that is registered
without a kit fails every test here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker.model.target import TARGETS, WritebackTarget, is_retryable
from broker.model.writeback import Delivery, DeliveryKind, DeliveryState, WritebackItem
from broker.store import StudyStore
from broker.store.results import ResultStore
from tests.databases import empty_database
from tests.integration.contracts.kits import TARGET_KITS, TargetKit
from tests.writeback_data import Scene


@dataclass
class Stage:
    """One completed result (findings and their SR) and the delivery of it to the target."""

    item: WritebackItem
    objects: list[Path]

    @property
    def message_id(self) -> str:
        return self.item.delivery.message_id


@pytest.fixture(params=TARGETS.names())
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> TargetKit:
    """The peers of one registered target type (every registered name in turn)."""
    name: str = request.param
    if name not in TARGET_KITS:
        pytest.fail(
            f"write-back target '{name}' is registered but has no peer kit; add one to "
            "TARGET_KITS in tests/integration/contracts/kits.py so it runs the contract"
        )
    return TARGET_KITS[name](tmp_path)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    with empty_database("sqlite", tmp_path) as eng:
        yield eng  # type: ignore[misc]


@pytest.fixture
def stage(engine: Engine, tmp_path: Path, kit: TargetKit) -> Stage:
    """A head CT, its job awaiting its result, the result, and one delivery of it."""
    scene = Scene.make(engine, tmp_path / "scene")
    job = scene.job()
    result = ResultStore(engine).get(scene.result(job))
    now = datetime.now(UTC)
    delivery = Delivery(
        id=1,
        result_id=result.id,
        job_id=job.id,
        study_uid=scene.study_uid,
        target="contract",
        target_type=kit.name,
        kind=DeliveryKind.RESULT,
        event="result",
        urgent=False,
        state=DeliveryState.SENDING,
        attempts=1,
        max_attempts=3,
        message_id=f"RBCONTRACT{kit.name.upper()}1",
        next_attempt_at=None,
        last_error=None,
        detail=None,
        created_at=now,
        updated_at=now,
    )
    study = StudyStore(engine).get_study(scene.study_uid)
    item = WritebackItem(delivery, job, result, study, None, route="head-ct")
    return Stage(item, [Path(o.path) for o in result.objects])


def _build(kit: TargetKit, params: dict[str, object]) -> WritebackTarget:
    return TARGETS.get(kit.name).from_params("contract", params)


def test_deliver_writes_the_result_back(kit: TargetKit, stage: Stage) -> None:
    """A delivery to a peer that takes it succeeds, says what it did, and the peer has it."""
    with kit.accepting() as peer:
        target = _build(kit, peer.params)
        try:
            detail = target.deliver(stage.item)
        finally:
            target.close()
        assert detail
        assert peer.held() == kit.expected(stage.message_id, stage.objects)


def test_peer_that_is_down_is_a_retryable_error(kit: TargetKit, stage: Stage) -> None:
    """Nothing listening at the target's address: the error says so and is retried."""
    target = _build(kit, kit.down())
    try:
        with pytest.raises(Exception) as raised:
            target.deliver(stage.item)
    finally:
        target.close()
    assert is_retryable(target, raised.value), raised.value
    assert "127.0.0.1" in str(raised.value)


def test_peer_that_refuses_is_a_fatal_error(kit: TargetKit, stage: Stage) -> None:
    """A target that refuses the result for good gives an error no retry is wasted on."""
    with kit.rejecting() as peer:
        target = _build(kit, peer.params)
        try:
            with pytest.raises(Exception) as raised:
                target.deliver(stage.item)
        finally:
            target.close()
        assert not is_retryable(target, raised.value), raised.value
        assert peer.held() == set()


def test_a_retry_is_the_same_message(kit: TargetKit, stage: Stage) -> None:
    """Delivering the same item again sends the same identifiers: nothing arrives twice
    as something new (same SOP Instance UIDs, MSH-10, Bundle identifier, idempotency key)."""
    with kit.accepting() as peer:
        target = _build(kit, peer.params)
        try:
            target.deliver(stage.item)
            first = peer.held()
            target.deliver(stage.item)
        finally:
            target.close()
        assert peer.held() == first == kit.expected(stage.message_id, stage.objects)


def test_close_lets_go_and_can_be_repeated(kit: TargetKit) -> None:
    """``close`` (when the stage stops or its configuration retires) never fails, even twice."""
    with kit.accepting() as peer:
        target = _build(kit, peer.params)
        target.close()
        target.close()
