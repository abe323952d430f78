"""Canaries on a real store (SQLite and PostgreSQL), their clock given: two timers (two
``radbridge serve`` processes on one store) make one canary per vendor and period, a
synthetic study marked as a test in the private block ``RADBRIDGE CANARY``, indexed as
stable and never routed, with one job of the canary route; no result by the deadline fails
it and raises one ``canary_failed`` with its webhook notification; a result within the next
period's deadline passes it and clears the alert; the canary's send is audited, not billed.
Results are recorded through the store, because a vendor's hours cannot pass in a test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine

from broker.model.alerts import AlertKind
from broker.model.canary import CANARY_ROUTE, CanaryState
from broker.model.domain import AlgorithmInfo, Code, Finding, Findings, StudyState
from broker.model.jobs import JobState
from broker.model.writeback import WEBHOOK_TARGET
from broker.runtime.billing import Accounting
from broker.runtime.canary import Canaries
from broker.runtime.watch import VendorWatch
from broker.store import JobStore, StudyStore
from broker.store.alerts import AlertStore
from broker.store.audit import AuditLog
from broker.store.canaries import CanaryStore
from broker.store.deliveries import DeliveryStore
from broker.store.results import ResultStore
from broker.store.spool import Spool
from broker.store.usage import UsageStore
from config.schema import Settings
from tests.databases import DATABASES, empty_database
from tests.integration.test_vendor_watch import HOOK

T0 = datetime(2024, 6, 1, 8, 0, 30, tzinfo=UTC)
CANARY = {"every": "1h", "deadline": "10m", "template": "ct_head", "instances": 2}
BILLING = {"unit": "study", "price": 30, "currency": "CNY"}
SETTINGS = Settings.model_validate(
    {
        "vendors": {
            name: {
                "product": product,
                "transport": {
                    "type": "dicom",
                    "ae_title": name.upper(),
                    "host": "127.0.0.1",
                    "port": 104,
                },
                **more,
            }
            for name, product, more in (
                ("ichai", "CT head bleed", {"billing": BILLING, "canary": CANARY}),
                ("lungai", "CT lung nodule", {}),  # no canary
            )
        }
    }
)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite or on a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _timer(engine: Engine, spool: Spool) -> Canaries:
    """One service's canary task, raising alerts through its vendor watch with a webhook."""
    watch = VendorWatch(engine, lambda: SETTINGS, notify=lambda: HOOK)
    return Canaries(engine, spool, lambda: SETTINGS, watch=watch)


def _answer(engine: Engine, job_id: int, at: datetime) -> None:
    """The vendor's result of the canary job, complete at ``at``."""
    jobs = JobStore(engine)
    jobs.claim(job_id, now=at)
    jobs.finish(job_id, [JobState.SENT, JobState.AWAITING_RESULT], now=at)
    study_uid = jobs.get(job_id).study_uid
    findings = Findings(
        study_uid=study_uid,
        algorithm=AlgorithmInfo("ichai", "CT head bleed", "1.0"),
        findings=(Finding(code=Code("SCT", "1386000", "Intracranial hemorrhage"), present=False),),
    )
    results = ResultStore(engine)
    assert results.complete(results.record_findings(job_id, findings, now=at), now=at)


def test_one_canary_per_period_fails_by_its_deadline_then_passes_and_clears(
    engine: Engine, tmp_path: Path
) -> None:
    """Two timers tick in the same period: one canary run, for ichai only (lungai has no
    canary block), its study stable and tagged as a test, one job of the canary route. Past
    the deadline without a result: failed, one ``canary_failed`` alert notified to the
    webhook (event ``canary_failed``, the canary's study); the other timer and later ticks
    raise nothing more. The next period's canary answered in time: passed, the alert
    cleared. Its send is audited and never billed."""
    spool = Spool(tmp_path / "spool")
    first, second = _timer(engine, spool), _timer(engine, spool)
    first(T0)
    second(T0 + timedelta(seconds=2))
    [run] = CanaryStore(engine).list()
    assert (run.vendor, run.state, run.actor) == ("ichai", CanaryState.WAITING, "timer")
    assert run.study_uid is not None and run.job_id is not None
    [job] = JobStore(engine).list(study_uid=run.study_uid)
    assert (job.id, job.vendor, job.route, job.state, job.max_attempts) == (
        run.job_id,
        "ichai",
        CANARY_ROUTE,
        JobState.PENDING,
        1,  # one attempt: a canary never holds the lane through the vendor's retries
    )
    study = StudyStore(engine).get_study(run.study_uid)
    assert study.state is StudyState.STABLE and study.patient.patient_id == "RB-CANARY"
    files = StudyStore(engine).instance_paths(run.study_uid)
    assert len(files) == 2 and all(Path(f).is_relative_to(spool.canaries) for f in files)
    tagged = pydicom.dcmread(files[0]).private_block(0x0011, "RADBRIDGE CANARY")
    assert (tagged[0x01].value, tagged[0x02].value) == ("TEST", "ichai")

    for timer in (first, second, first):
        timer(T0 + timedelta(minutes=11))
    assert CanaryStore(engine).get(run.id).state is CanaryState.FAILED
    [alert] = AlertStore(engine).list(vendor="ichai", kind=AlertKind.CANARY_FAILED)
    assert alert.detail["run_id"] == run.id and "no result by the deadline" in str(
        alert.detail["summary"]
    )
    [notice] = DeliveryStore(engine).list(target=WEBHOOK_TARGET)
    assert (notice.id, notice.event, notice.study_uid) == (
        alert.delivery_id,
        "canary_failed",
        run.study_uid,
    )

    later = T0 + timedelta(hours=1)
    second(later)
    first(later + timedelta(seconds=1))
    newest, _ = CanaryStore(engine).list()
    assert newest.id != run.id and newest.job_id is not None
    _answer(engine, newest.job_id, later + timedelta(minutes=3))
    first(later + timedelta(minutes=4))
    assert CanaryStore(engine).get(newest.id).state is CanaryState.PASSED
    [cleared] = AlertStore(engine).list(vendor="ichai", kind=AlertKind.CANARY_FAILED)
    assert cleared.id == alert.id and cleared.cleared_at is not None
    assert len(DeliveryStore(engine).list(target=WEBHOOK_TARGET)) == 1

    sent = JobStore(engine).get(newest.job_id)
    assert Accounting(engine, lambda: SETTINGS).record(sent, later) is None
    assert UsageStore(engine).uncounted_sent_jobs() == []
    audit = AuditLog(engine).list(target=f"job:{newest.job_id}")
    assert [(a.action, a.detail["canary"]) for a in audit] == [("study.sent", True)]


def test_a_canary_run_now_is_made_at_once_and_a_vendor_without_one_is_refused(
    engine: Engine, tmp_path: Path
) -> None:
    """``run_now`` (the CLI's) makes a run whatever the period, by the named actor; a vendor
    without a canary block is refused with what to add."""
    canaries = Canaries(engine, Spool(tmp_path / "spool"), lambda: SETTINGS)
    run = canaries.run_now("ichai", actor="cli:ops", now=T0)
    assert (run.state, run.actor, run.deadline_at) == (
        CanaryState.WAITING,
        "cli:ops",
        T0 + timedelta(minutes=10),
    )
    with pytest.raises(Exception, match=r"lungai.*has no canary block; add canary"):
        canaries.run_now("lungai", actor="cli:ops", now=T0)
