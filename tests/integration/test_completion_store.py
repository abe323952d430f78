"""Completion in the store, on SQLite and PostgreSQL: MPPS/IAN notices, closing and holding
studies, the time ledger and turnaround rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker.model.completion import Completion, NoticeKind
from broker.model.domain import InstanceRecord, Patient
from broker.model.errors import DuplicateError, NotFoundError
from broker.model.jobs import JobState
from broker.store import JobStore, StudyStore
from broker.store.notices import NoticeIn, NoticeStore
from broker.store.study_events import StudyEvents
from broker.store.timeline import study_timeline, turnaround
from tests.databases import DATABASES, empty_database

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.511.77"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database: a fresh SQLite file, or a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _instance(sop: str, at: datetime) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_uid=STUDY + ".1",
        study_uid=STUDY,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"/spool/{sop}.dcm",
        size=10,
        patient=Patient(patient_id="P1"),
        accession_number="A1",
        study_date="20261206",
        study_time=None,
        study_description="head",
        referring_physician=None,
        institution=None,
        modality="CT",
        body_part="HEAD",
        series_description="plain",
        series_number=1,
        protocol_name=None,
        slice_thickness=5.0,
        image_type=(),
        contrast_agent=None,
        instance_number=1,
        number_of_frames=None,
        calling_ae="CT01",
        called_ae="RADBRIDGE",
        peer_address="127.0.0.1",
        received_at=at,
    )


def _mpps(status: str, refs: tuple[str, ...] = ()) -> NoticeIn:
    return NoticeIn(
        kind=NoticeKind.MPPS,
        sop_instance_uid="1.2.9.1",
        study_uid=STUDY,
        accession_number="A1",
        status=status,
        referenced=refs,
        dataset_json="{}",
        calling_ae="CT01",
        called_ae="RADBRIDGE",
        peer_address="127.0.0.1",
    )


def test_notices_are_kept_once_updated_and_read_back(engine: Engine) -> None:
    """An MPPS is created once (a second create is a duplicate), updated by its UID (an
    unknown one is not found), and read back with its references and their presence."""
    notices = NoticeStore(engine)
    StudyStore(engine).record_instance(_instance("1.2.5.1", T0), 60)
    notices.create(_mpps("IN PROGRESS"), T0)
    with pytest.raises(DuplicateError):
        notices.create(_mpps("IN PROGRESS"), T0)
    with pytest.raises(NotFoundError):
        notices.update(replace(_mpps("COMPLETED"), sop_instance_uid="9.9"), T0)
    done = notices.update(_mpps("COMPLETED", ("1.2.5.1", "1.2.5.2")), T0 + timedelta(seconds=1))
    assert done.status == "COMPLETED" and done.referenced == ("1.2.5.1", "1.2.5.2")
    [held] = notices.for_study(STUDY)
    assert held.id == done.id and held.updated_at == T0 + timedelta(seconds=1)
    assert notices.present(STUDY, list(held.referenced)) == {"1.2.5.1"}
    history = StudyEvents(engine).history(STUDY)
    assert [(e.kind, e.reason) for e in history] == [
        ("mpps", "IN PROGRESS"),
        ("mpps", "COMPLETED"),
    ]


def test_close_and_hold_are_conditional(engine: Engine) -> None:
    """A quiet study is held until a deadline, closed once (with its reason in the history),
    and a close that expects it quiet fails when an instance came since."""
    studies, events = StudyStore(engine), StudyEvents(engine)
    studies.record_instance(_instance("1.2.5.1", T0), 10)
    assert [d.study_uid for d in events.due(T0 + timedelta(seconds=10))] == [STUDY]
    until = T0 + timedelta(minutes=5)
    assert events.hold(STUDY, until, "waiting for perfusion", T0 + timedelta(seconds=10))
    assert events.due(T0 + timedelta(seconds=11)) == []
    events.due_by(STUDY, T0 + timedelta(minutes=1))
    assert [d.due_at for d in events.due(T0 + timedelta(minutes=1))] == [T0 + timedelta(minutes=1)]
    studies.record_instance(_instance("1.2.5.2", T0 + timedelta(seconds=50)), 10)
    late = T0 + timedelta(seconds=55)
    assert not events.close(STUDY, Completion.QUIET, "quiet", late, due_by=late)
    assert events.close(STUDY, Completion.MPPS, "steps completed", late)
    assert not events.close(STUDY, Completion.MPPS, "again", late)
    assert studies.get_study(STUDY).stable_at == late
    assert [(e.kind, e.reason) for e in events.history(STUDY)] == [
        ("waiting", None),
        ("complete", "mpps"),
    ]


def test_timeline_and_turnaround(engine: Engine) -> None:
    """The ledger lists instances, completion, routing and sending in time order; the
    turnaround row of the job has the seconds from the first instance to each step."""
    studies, events, jobs = StudyStore(engine), StudyEvents(engine), JobStore(engine)
    studies.record_instance(_instance("1.2.5.1", T0), 10)
    studies.record_instance(_instance("1.2.5.2", T0 + timedelta(seconds=2)), 10)
    events.close(STUDY, Completion.EXPECTED_SERIES, "all in", T0 + timedelta(seconds=3))
    job = jobs.create(STUDY, "strokeai", route="stroke", now=T0 + timedelta(seconds=3)).job
    jobs.claim(job.id, now=T0 + timedelta(seconds=3))
    jobs.finish(job.id, [JobState.SENT], now=T0 + timedelta(seconds=4))
    stamps = study_timeline(engine, STUDY)
    assert [s.kind for s in stamps] == [
        "first_instance",
        "last_instance",
        "complete",
        "routed",
        "sent",
    ]
    assert stamps[-1].subject == "strokeai" and stamps[2].reason == "expected_series"
    with pytest.raises(NotFoundError):
        study_timeline(engine, "1.2.3")
    [row] = turnaround(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert (row.route, row.complete_reason) == ("stroke", "expected_series")
    assert row.seconds("complete") == 3.0 and row.seconds("sent") == 4.0
    assert row.seconds("result") is None
    assert turnaround(engine, T0 + timedelta(seconds=1), T0 + timedelta(hours=1)) == []
