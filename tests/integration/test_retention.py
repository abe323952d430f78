"""Retention on SQLite and PostgreSQL: which studies a purge takes, and what stays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from broker.model.jobs import JobState
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.retention import PURGE, Cutoffs, Retention
from broker.store.space import spool_bytes
from broker.store.spool import Spool
from broker.store.tables import audit, instances, jobs, studies
from tests.databases import DATABASES, empty_database
from tests.spooling import spool_study

NOW = datetime.now(UTC)
HOURS_AGO = NOW - timedelta(hours=2)


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def _study(engine: Engine, spool: Spool, out: Path, job: JobState | None) -> str:
    """A stable study of two instances, stable two hours ago, with one job in ``job``."""
    uid, _ = spool_study(engine, spool, "ct_head", out, instances=2, rows=32, columns=32)
    with engine.begin() as conn:
        conn.execute(
            update(studies)
            .where(studies.c.study_uid == uid)
            .values(state="stable", stable_at=HOURS_AGO)
        )
    if job is not None:
        created = JobStore(engine).create(uid, "lungai", route="chest").job
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == created.id)
                .values(state=job.value, updated_at=HOURS_AGO)
            )
    return uid


def test_purge_takes_finished_studies_only_and_keeps_them_listed(
    engine: Engine, tmp_path: Path
) -> None:
    """Past studies_after_done, a study without jobs and one whose job is done are purged
    (files, instance rows; the study row stays with purged_at, an audit row each); one with
    a dead job waits for the longer studies_after_failed, one with a pending job stays."""
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    unrouted, done, dead, pending = (
        _study(engine, spool, tmp_path / name, job)
        for name, job in (
            ("unrouted", None),
            ("done", JobState.DONE),
            ("dead", JobState.DEAD),
            ("pending", JobState.PENDING),
        )
    )
    retention = Retention(engine, spool)
    cutoffs = Cutoffs(studies_done=NOW - timedelta(hours=1), studies_failed=NOW - timedelta(days=1))
    planned = retention.plan(cutoffs)
    assert {i.target for i in planned.items} == {unrouted, done}
    before = spool_bytes(engine)
    assert planned.bytes > 0 and before > planned.bytes

    purged = retention.purge(cutoffs, actor="cli:test")
    assert {i.target for i in purged.items} == {unrouted, done}
    assert spool_bytes(engine) == before - purged.bytes
    for uid in (unrouted, done):
        assert not (spool.studies / spool.folder_name(uid)).exists()
        study = StudyStore(engine).get_study(uid)
        assert study.purged_at is not None and study.instance_count == 0
    for uid in (dead, pending):
        assert len(list((spool.studies / spool.folder_name(uid)).rglob("*.dcm"))) == 2
    with engine.connect() as conn:
        left = set(conn.execute(select(instances.c.study_uid)).scalars())
        trail = conn.execute(select(audit.c.target).where(audit.c.action == PURGE)).scalars()
        assert left == {dead, pending}
        assert sorted(trail) == sorted([f"study:{unrouted}", f"study:{done}"])
    assert retention.plan(cutoffs).items == []
