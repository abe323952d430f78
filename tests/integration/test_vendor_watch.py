"""The vendor watch on a real store (SQLite and PostgreSQL), its clock given: a product whose
positive rate doubles raises one ``drift`` alert for the code in its window (the test named
in the docs, a two-proportion z-test); a vendor that takes studies and answers none raises
``results_missing``; a new product version in a result raises ``version_changed`` once;
canary jobs count in no figure. The studies and results are made through the stores, with
times, because a window of days cannot pass in a test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from broker.model.alerts import Alert, AlertKind
from broker.model.canary import CANARY_ROUTE
from broker.model.domain import AlgorithmInfo, Code, Finding, Findings
from broker.model.jobs import JobState
from broker.model.writeback import WEBHOOK_TARGET, DeliveryKind
from broker.runtime.watch import VendorWatch
from broker.store import JobStore
from broker.store.alerts import AlertStore
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.performance import job_records
from broker.store.results import ResultStore
from broker.store.tables import deliveries
from config.schema import Settings
from tests.databases import DATABASES, empty_database

T0 = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
RIB = Code("SCT", "33737001", "Fracture of rib")
SETTINGS = Settings.model_validate(
    {
        "monitoring": {
            "drift": {"window": "7d", "baseline": "30d", "alpha": 0.05, "min_findings": 30},
            "results_missing": {"window": "1h", "after": "15m", "min_share": 0.8, "min_studies": 5},
        }
    }
)

#: The webhook's notification the service fills in for an alert.
HOOK = NewDelivery(
    study_uid="",
    target=WEBHOOK_TARGET,
    target_type="webhook",
    kind=DeliveryKind.NOTIFY,
    max_attempts=3,
)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite or on a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


class Scene:
    def __init__(self, engine: Engine) -> None:
        self.jobs, self.results = JobStore(engine), ResultStore(engine)
        self.n = 0

    def study(
        self,
        vendor: str,
        at: datetime,
        present: bool | None,
        *,
        version: str = "1.0",
        route: str = "chest",
        score: float | None = None,
    ) -> int:
        """A job sent at ``at``; with ``present`` not None, its result (one rib-fracture
        finding) complete ten minutes later; the job's id."""
        self.n += 1
        uid = f"1.2.3.{self.n}"
        job = self.jobs.create(uid, vendor, route=route, now=at).job
        self.jobs.claim(job.id, now=at)
        self.jobs.finish(job.id, [JobState.SENT, JobState.AWAITING_RESULT], now=at)
        if present is not None:
            done = at + timedelta(minutes=10)
            findings = Findings(
                study_uid=uid,
                algorithm=AlgorithmInfo(vendor, "Rib fracture CT", version),
                findings=(Finding(code=RIB, present=present, score=score),),
            )
            result_id = self.results.record_findings(job.id, findings, now=done)
            assert self.results.complete(result_id, now=done) is not None
            self.last_result = result_id
        return job.id


def test_a_doubled_positive_rate_raises_drift_once(tmp_path: Path) -> None:
    """30 % positive over the baseline's 30 studies, 60 % over the last week's 30: z = 2.34,
    p = 0.020 < 0.05, one drift alert for SCT:33737001 (another check in the same window
    raises none); the same rate in both periods raises nothing. (SQLite only: the queries
    are those the other tests run on PostgreSQL too.)"""
    with empty_database("sqlite", tmp_path) as engine:
        _drift(engine)


def _drift(engine: Engine) -> None:
    scene, watch = Scene(engine), VendorWatch(engine, lambda: SETTINGS)
    now = T0 + timedelta(days=40)
    for i in range(30):
        scene.study("ribai", now - timedelta(days=20, hours=i), present=i % 10 < 3)
        scene.study("ribai", now - timedelta(days=3, hours=i), present=i % 10 < 6)
        scene.study("steadyai", now - timedelta(days=20, hours=i), present=i % 10 < 3)
        scene.study("steadyai", now - timedelta(days=3, hours=i), present=i % 10 < 3)
    [alert] = watch.check("ribai", now)
    assert (alert.kind, alert.code) == (AlertKind.DRIFT, "SCT:33737001")
    assert "60.0% (18/30) against 30.0% (9/30)" in str(alert.detail["summary"])
    assert round(float(str(alert.detail["z"])), 2) == 2.34
    assert watch.check("ribai", now + timedelta(hours=1)) == []
    assert watch.check("steadyai", now) == []
    assert [a.kind for a in AlertStore(engine).list(vendor="ribai")] == [AlertKind.DRIFT]


def test_a_vendor_that_answers_nothing_raises_results_missing(engine: Engine) -> None:
    """Six studies sent in the hour (each over 15 minutes ago), none answered: one alert;
    a vendor that answered them, or studies sent less than 15 minutes ago, raise none;
    canary jobs do not count here nor in the performance figures."""
    scene, watch = Scene(engine), VendorWatch(engine, lambda: SETTINGS)
    now = T0 + timedelta(hours=2)
    for i in range(6):
        scene.study("silentai", now - timedelta(minutes=20 + i), present=None)
        scene.study("lungai", now - timedelta(minutes=20 + i), present=False)
        scene.study("newai", now - timedelta(minutes=5 + i), present=None)
        scene.study("lungai", now - timedelta(minutes=30 + i), present=None, route=CANARY_ROUTE)
    [alert] = watch.check("silentai", now)
    assert alert.kind is AlertKind.RESULTS_MISSING and alert.detail["sent"] == 6
    assert watch.check("lungai", now) == [] and watch.check("newai", now) == []
    assert len(job_records(engine, "lungai", T0, now)) == 6  # the canaries are not counted


def test_a_new_product_version_raises_version_changed_once(engine: Engine) -> None:
    """Results of 1.0, then one of 2.0: one alert naming both; another 2.0 result, none;
    the figures count results by version."""
    scene, watch = Scene(engine), VendorWatch(engine, lambda: SETTINGS)
    scene.study("ribai", T0, present=True)
    watch.result_complete(scene.last_result)
    scene.study("ribai", T0 + timedelta(hours=1), present=True, version="2.0")
    watch.result_complete(scene.last_result)
    scene.study("ribai", T0 + timedelta(hours=2), present=False, version="2.0")
    watch.result_complete(scene.last_result)
    [alert] = AlertStore(engine).list(vendor="ribai")
    assert alert.kind is AlertKind.VERSION_CHANGED
    assert (alert.detail["previous"], alert.detail["version"]) == ("1.0", "2.0")
    records = job_records(engine, "ribai", T0, T0 + timedelta(days=1))
    assert [r.version for r in records] == ["1.0", "2.0", "2.0"]


def test_shifted_probabilities_raise_drift_of_kind_probability_and_notify_once(
    engine: Engine,
) -> None:
    """Half the findings present in both periods (no positive-rate drift), but the recent
    week's probabilities sit above the baseline's (two-sample Kolmogorov-Smirnov, p < 0.05):
    one ``drift`` alert of the kind ``probability``, made with its webhook notification
    (event ``drift``); the next check in the window raises and notifies nothing."""
    woken: list[str] = []
    scene = Scene(engine)
    watch = VendorWatch(engine, lambda: SETTINGS, notify=lambda: HOOK, wake=woken.append)
    now = T0 + timedelta(days=40)
    for i in range(40):
        present = i % 2 == 0
        scene.study("ribai", now - timedelta(days=20, hours=i), present, score=i / 80)
        scene.study("ribai", now - timedelta(days=3, hours=i), present, score=0.3 + i / 80)
    [alert] = watch.check("ribai", now)
    assert (alert.kind, alert.code, alert.detail["drift"]) == (
        AlertKind.DRIFT,
        "SCT:33737001",
        "probability",
    )
    assert "Kolmogorov-Smirnov D = 0.60" in str(alert.detail["summary"])
    assert alert.delivery_id is not None and woken == [WEBHOOK_TARGET]
    notices = DeliveryStore(engine).list(target=WEBHOOK_TARGET)
    assert [(d.id, d.event, d.kind) for d in notices] == [
        (alert.delivery_id, "drift", DeliveryKind.NOTIFY)
    ]
    assert AlertStore(engine).for_delivery(alert.delivery_id) == alert
    assert watch.check("ribai", now + timedelta(minutes=5)) == []
    assert len(DeliveryStore(engine).list(target=WEBHOOK_TARGET)) == 1 and len(woken) == 1


def test_evaluators_raising_one_alert_at_once_record_it_once(engine: Engine) -> None:
    """Eight evaluators (threads, each its own connection: as several processes on one
    store) raise the same version_changed alert at the same moment: one records it with
    its webhook notification, the others are told it was raised before; another key is
    another alert."""
    store = AlertStore(engine)
    notice = NewDelivery(
        study_uid="",
        target="webhook",
        target_type="webhook",
        kind=DeliveryKind.NOTIFY,
        max_attempts=3,
    )
    start = threading.Barrier(8)

    def evaluate(_n: int) -> Alert | None:
        start.wait()
        return store.raise_once(
            AlertKind.VERSION_CHANGED,
            "ribai",
            {"summary": "3.1 -> 3.2"},
            key="3.1->3.2",
            notify=notice,
        )

    with ThreadPoolExecutor(8) as pool:
        raised = [a for a in pool.map(evaluate, range(8)) if a is not None]
    assert len(raised) == 1 and raised[0].delivery_id is not None
    assert store.raise_once(AlertKind.VERSION_CHANGED, "ribai", {}, key="3.2->3.3") is not None
    assert len(store.list(vendor="ribai")) == 2
    with engine.connect() as conn:
        notices = conn.execute(select(func.count()).select_from(deliveries)).scalar_one()
    assert notices == 1
