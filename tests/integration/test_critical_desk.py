"""Critical-result cases on the store (SQLite and PostgreSQL): escalation lives in the store,
so a restarted service (a new stage on the same database) carries on where the old one
stopped, two timers never escalate a case twice, and an acknowledgement stops escalation.

The clock is passed in (a test does not wait ten minutes); the notifications are sent to a
loopback HTTP receiver by the real webhook target.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker.engine.plan import FixedPlan, FixedPlans
from broker.engine.writeback_stage import WritebackStage
from broker.model.critical import (
    CHANNEL_PREFIX,
    AckVia,
    CaseState,
    CaseStateError,
    Contact,
    CriticalPolicy,
)
from broker.model.writeback import DeliveryState, TargetSpec
from broker.runtime.snapshot import build_targets
from broker.store.critical import CriticalStore
from broker.store.results import ResultStore
from tests.databases import DATABASES, empty_database
from tests.fhir_receiver import Webhook
from tests.writeback_data import Scene

SMS = CHANNEL_PREFIX + "sms"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _stage(engine: Engine, hook: Webhook, clock: Clock) -> WritebackStage:
    """A write-back stage (as a service builds it) with two contacts, ten minutes each."""
    specs = {SMS: TargetSpec(SMS, "webhook", {"url": hook.url, "template": "sms"}, 3, 0, 0)}
    policy = CriticalPolicy(
        contacts=(
            Contact("Dr. Li", {"sms": "13800000001"}, 600.0),
            Contact("Dr. Wang", {"sms": "13800000002"}, 600.0),
        ),
        channels={"sms": SMS},
    )
    plan = FixedPlan(
        targets=specs, writers=build_targets(specs), routes={"head-ct": ()}, critical=policy
    )
    return WritebackStage(engine, FixedPlans(plan), results=ResultStore(engine).get, clock=clock)


def test_escalation_survives_a_restart_happens_once_and_stops_on_acknowledgement(
    engine: Engine, tmp_path: Path
) -> None:
    """An urgent result notifies the first contact; ten minutes later a new stage on the same
    store (a restart) escalates to the second, and the old one's timer finds nothing left
    to do; then the list is exhausted and the deadline passes (each once); the
    acknowledgement closes the case, once, and no later tick adds to its ledger."""
    scene = Scene.make(engine, tmp_path)
    clock = Clock()
    with Webhook() as hook:
        before = _stage(engine, hook, clock)
        before.schedule(scene.result(scene.job(), urgent=True))
        store = CriticalStore(engine)
        [case] = store.list()
        assert case.level == 0 and case.next_escalation_at == clock.now + timedelta(minutes=10)
        assert before.run_once(SMS) is not None
        assert before.critical.tick(clock.now + timedelta(minutes=9)) is not None
        assert store.get(case.id).level == 0  # not yet: nine minutes

        clock.now += timedelta(minutes=10)
        after = _stage(engine, hook, clock)  # the restarted service
        after.critical.tick(clock.now)
        before.critical.tick(clock.now)  # another timer on the same store: nothing to do
        escalated = store.get(case.id)
        assert escalated.level == 1 and escalated.overdue_at is None
        [done] = [after.run_once(SMS)]
        assert done is not None and done.state is DeliveryState.DONE
        assert after.run_once(SMS) is None  # one notification of the second contact, not two

        after.critical.tick(clock.now + timedelta(minutes=10))  # the second waited: exhausted
        after.critical.tick(clock.now + timedelta(minutes=21))  # 31 min after the exam
        assert store.get(case.id).overdue(clock.now + timedelta(minutes=21))
        acked = store.acknowledge(case.id, by="Dr. Wang", via=AckVia.CLI, actor="cli:test")
        assert acked.state is CaseState.ACKNOWLEDGED and acked.next_escalation_at is None
        with pytest.raises(CaseStateError, match=r"by Dr\. Wang"):
            store.acknowledge(case.id, by="Dr. Li", via=AckVia.CLI, actor="cli:test")
        after.critical.tick(clock.now + timedelta(hours=1))

    kinds = [s.kind.value for s in store.steps(case.id)]
    assert kinds == [
        "opened",
        "notified",
        "sent",
        "escalated",
        "notified",
        "sent",
        "exhausted",
        "overdue",
        "acknowledged",
    ]
    assert [body["to"] for _, body in hook.received] == ["13800000001", "13800000002"]
