"""Usage counting and the audit trail on SQLite and PostgreSQL: units, trial quotas,
bundles, idempotence, reconciliation, append-only audit, reports."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from broker.model.jobs import Job, JobState
from broker.runtime.billing import Accounting
from broker.store import JobStore, StudyStore
from broker.store.audit import Action, AuditLog, export_csv
from broker.store.usage import UsageStore, report_csv
from config.schema import Settings
from tests.databases import DATABASES, empty_database
from tests.integration.test_store import _rec

T0 = datetime(2024, 5, 1, 20, 30, tzinfo=UTC)  # 2024-05-02 04:30 in Asia/Shanghai
STUDY = "1.2.826.0.1.3680043.10.511.7"
SERIES_B = "1.2.826.0.1.3680043.10.511.7.2"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _settings(**billing: Any) -> Settings:
    vendor = {
        "product": "CT lung nodule",
        "transport": {"type": "dicom", "ae_title": "LUNGAI", "host": "127.0.0.1", "port": 104},
    }
    return Settings.model_validate(
        {
            "site": {"name": "General", "timezone": "Asia/Shanghai"},
            "vendors": {
                "lungai": {**vendor, "billing": billing} if billing else vendor,
                "ribai": {**vendor, "product": "Rib fracture", "billing": {"unit": "bundle"}},
            },
        }
    )


def _sent_job(
    engine: Engine, study: str, vendor: str = "lungai", series: tuple[str, ...] = ()
) -> Job:
    jobs = JobStore(engine)
    job = jobs.create(study, vendor, route="chest", series_uids=series, now=T0).job
    jobs.claim(job.id, now=T0)
    return jobs.finish(job.id, [JobState.SENT, JobState.AWAITING_RESULT], now=T0)


def _study(engine: Engine, study: str = STUDY) -> None:
    store = StudyStore(engine)
    store.record_instance(_rec(f"{study}.1", study=study, series_uid=f"{study}.9"), 1.0)
    store.record_instance(_rec(f"{study}.2", study=study, series_uid=f"{study}.8"), 1.0)


def test_a_delivery_is_counted_once_per_job_with_site_day_and_audited(engine: Engine) -> None:
    """One usage row per job (a resend is audited, not counted again); the day is the site's."""
    _study(engine)
    accounting = Accounting(engine, lambda: _settings(unit="study", price="30", currency="CNY"))
    job = _sent_job(engine, STUDY)
    entry = accounting.record(job, T0)
    assert entry is not None
    assert (entry.day, entry.quantity, entry.billable, entry.trial) == (
        "2024-05-02",
        1,
        True,
        False,
    )
    assert entry.series_count == 2 and entry.product == "CT lung nodule" and entry.site == "General"
    assert accounting.record(job, T0 + timedelta(minutes=5)) is None
    sent = AuditLog(engine).export(T0 - timedelta(1), T0 + timedelta(1), action=Action.STUDY_SENT)
    assert len(sent) == 2 and sent[0].actor == "radbridge" and sent[0].target == f"job:{job.id}"
    assert sent[0].detail["vendor"] == "lungai" and sent[0].detail["route"] == "chest"
    assert sorted(sent[0].detail["series_uids"]) == sorted([f"{STUDY}.8", f"{STUDY}.9"])
    [line] = UsageStore(engine).report(date(2024, 5, 2), date(2024, 5, 2))
    assert (line.studies, line.billable, str(line.amount), line.currency) == (1, 1, "30", "CNY")
    assert (
        report_csv([line]).splitlines()[1]
        == "lungai,CT lung nodule,General,2024-05-02,study,1,1,1,0,0,30,CNY,0,,,,"
    )


def test_series_unit_counts_the_series_sent(engine: Engine) -> None:
    """``unit: series``: the quantity is the number of series the job sent."""
    _study(engine)
    accounting = Accounting(engine, lambda: _settings(unit="series", price="5"))
    entry = accounting.record(_sent_job(engine, STUDY, series=(f"{STUDY}.9",)), T0)
    assert entry is not None and (entry.quantity, entry.unit) == (1, "series")
    other = "1.2.3.4.5"
    _study(engine, other)
    entry = accounting.record(_sent_job(engine, other), T0)
    assert entry is not None and entry.quantity == 2


def test_a_bundle_counts_a_study_once_for_all_its_products(engine: Engine) -> None:
    """Two products of one bundle on the same study: quantity 1 on one row, 0 on the other."""
    _study(engine)
    settings = _settings(unit="bundle", bundle="chest-pack")
    settings = settings.model_copy(
        update={
            "vendors": {
                **settings.vendors,
                "ribai": settings.vendors["ribai"].model_copy(
                    update={"billing": settings.vendors["lungai"].billing}
                ),
            }
        }
    )
    accounting = Accounting(engine, lambda: settings)
    first = accounting.record(_sent_job(engine, STUDY, "lungai"), T0)
    second = accounting.record(_sent_job(engine, STUDY, "ribai"), T0)
    assert first is not None and second is not None
    assert (first.quantity, second.quantity) == (1, 0)


@pytest.mark.parametrize("action", ["mark_unbillable", "bill"])
def test_trial_quota_then_unbillable_or_billed(engine: Engine, action: str) -> None:
    """The first ``trial_quota`` studies are trial; then not billable, or billed."""
    accounting = Accounting(
        engine, lambda: _settings(price="30", trial_quota=2, when_quota_used=action)
    )
    entries = []
    for n in range(3):
        uid = f"1.2.3.{n}"
        _study(engine, uid)
        entry = accounting.record(_sent_job(engine, uid), T0)
        assert entry is not None
        entries.append((entry.trial, entry.billable))
    assert entries == [(True, False), (True, False), (False, action == "bill")]
    [line] = UsageStore(engine).report(date(2024, 5, 2), date(2024, 5, 2))
    assert line.trial == 2 and line.billable + line.unbillable == 1


def test_reconcile_counts_jobs_sent_before_a_crash(engine: Engine) -> None:
    """A job that reached ``sent`` without its usage row is counted at start, with its send time."""
    _study(engine)
    job = _sent_job(engine, STUDY)
    accounting = Accounting(engine, _settings)
    assert accounting.reconcile() == 1
    entry = UsageStore(engine).get(job.id)
    assert entry is not None and entry.sent_at == T0
    assert accounting.reconcile() == 0


def test_audit_is_append_only(engine: Engine) -> None:
    """The table refuses UPDATE and DELETE (a trigger); export is ordered and filtered by time."""
    log = AuditLog(engine)
    log.record("cli:alice", Action.JOB_RETRY, "job:1", {"vendor": "lungai"}, "", now=T0)
    log.record("token:2 (ris)", Action.JOB_CANCEL, "job:2", None, "10.0.0.5", now=T0 + timedelta(1))
    for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    [entry] = log.export(T0, T0 + timedelta(hours=1))
    assert (entry.actor, entry.detail) == ("cli:alice", {"vendor": "lungai"})
    csv_text = export_csv(log.export(T0, T0 + timedelta(days=2)))
    assert csv_text.splitlines()[0] == "id,at,actor,action,target,peer,detail"
    assert "token:2 (ris),job.cancel,job:2,10.0.0.5" in csv_text
    assert [e.id for e in log.list(limit=1)] == [2]
