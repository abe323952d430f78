"""Each job's fetch of priors in the store (SQLite): the time ledger's stamps, what a vendor
that pulls by manifest may fetch with the job's token, and the clean-up once the job left
the vendor (the job engine timer's task)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker.engine.bus import Bus
from broker.engine.dispatch import JobWork
from broker.model.jobs import JobState
from broker.model.priors import FetchedPrior, PriorInstance, PriorsFetched, PriorsPolicy
from broker.store.jobs import JobStore
from broker.store.priors import PriorStore
from broker.store.timeline import study_timeline
from tests.databases import empty_database
from tests.writeback_data import Scene

PRIOR = "1.2.826.0.1.3680043.8.498.7001"
POLICY = PriorsPolicy("pacs", "dicom", count=2, wait=5)
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with empty_database("sqlite", tmp_path) as eng:
        yield eng


def _fetched(folder: Path) -> PriorsFetched:
    """One prior of two instances in one series, spooled in ``folder``."""
    folder.mkdir(parents=True)
    instances = []
    for n in range(2):
        path = folder / f"{n:05d}.dcm"
        path.write_bytes(b"DICM" * (n + 1))
        instances.append(
            PriorInstance("1.2.3.1", f"1.2.3.1.{n}", "1.2.840.10008.1.2.1", path, n + 1)
        )
    prior = FetchedPrior(PRIOR, "20240105", tuple(i.path for i in instances), 0, tuple(instances))
    return PriorsFetched((prior,), "priors from pacs: 1 of 2 asked (2 instances)")


def test_a_pulled_prior_is_the_jobs_alone_and_in_the_ledger(engine: Engine, tmp_path: Path) -> None:
    """A fetch recorded for a pulling vendor's job lists its prior (series and instances)
    for that job only, and the study's ledger stamps it requested, then fetched."""
    scene = Scene.make(engine, tmp_path)
    job, other = scene.job("cloud", "chest"), scene.job("lungai", "chest")
    store = PriorStore(engine)
    store.requested(job, POLICY, T0)
    store.done(job, _fetched(tmp_path / "priors"), T0 + timedelta(seconds=1), served=True)
    [prior] = store.studies(job.id)
    assert (prior.study_uid, prior.series) == (PRIOR, (("1.2.3.1", 2),))
    assert store.served(job.id, PRIOR) and not store.served(other.id, PRIOR)
    assert [i.sop_instance_uid for i in store.instances(job.id, PRIOR)] == [
        "1.2.3.1.0",
        "1.2.3.1.1",
    ]
    assert store.instances(other.id, PRIOR) == []
    stamps = [s for s in study_timeline(engine, scene.study_uid) if s.kind.startswith("priors")]
    assert [(s.kind, s.subject, s.detail) for s in stamps] == [
        ("priors_requested", "cloud", "up to 2 from pacs"),
        ("priors_fetched", "cloud", "priors from pacs: 1 of 2 asked (2 instances)"),
    ]


def test_no_prior_is_a_skipped_stamp_and_served_nothing(engine: Engine, tmp_path: Path) -> None:
    """A fetch that brought nothing (the PACS did not answer) is stamped skipped with why,
    and a pushing vendor's priors are never listed for WADO-RS."""
    scene = Scene.make(engine, tmp_path)
    job = scene.job("followup", "head")
    store = PriorStore(engine)
    store.requested(job, POLICY, T0)
    store.done(job, PriorsFetched(note="sent without priors: the PACS pacs did not answer"), T0)
    pushed = scene.job("cloud", "head")
    store.requested(pushed, POLICY, T0)
    store.done(pushed, _fetched(tmp_path / "pushed"), T0)
    stamps = {s.kind: s for s in study_timeline(engine, scene.study_uid) if s.job_id == job.id}
    assert stamps["priors_skipped"].detail == "sent without priors: the PACS pacs did not answer"
    assert "priors_fetched" not in stamps
    assert store.studies(pushed.id) == []
    assert store.of_jobs([job.id])[job.id].describe().startswith("sent without priors")


def test_the_timer_removes_pulled_priors_once_the_job_left_the_vendor(
    engine: Engine, tmp_path: Path
) -> None:
    """The job engine timer's task keeps a pulling vendor's priors while its job is at the
    vendor, and removes the spooled copies and their rows once the job is done."""
    scene = Scene.make(engine, tmp_path)
    job = scene.job("cloud", "chest")
    bus = Bus("memory://", prefix=f"priors-{uuid.uuid4().hex[:8]}")
    try:
        work = JobWork(engine, bus, lambda: T0, [], priors=tmp_path / "spool-priors")
        folder = work.priors_folder(job)
        store = PriorStore(engine)
        store.requested(job, POLICY, T0)
        store.done(job, _fetched(folder), T0, served=True)
        work.sweep_priors(T0)
        assert folder.exists() and store.served(job.id, PRIOR)
        jobs = JobStore(engine)
        jobs.finish(job.id, [JobState.RESULT_RECEIVED])
        work.sweep_priors(T0)
    finally:
        bus.close()
    assert not folder.exists()
    assert not store.served(job.id, PRIOR)
    assert store.of_job(job.id) is not None  # the ledger keeps the fetch
