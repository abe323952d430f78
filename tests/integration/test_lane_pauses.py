"""Pauses of a vendor's lane in the store (SQLite and PostgreSQL): nothing is claimed while
one holds, whatever the capacity; it ends by itself at its ``until`` or when resumed; both
are audited in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker.model.work import LaneNotPausedError
from broker.store import JobStore
from broker.store.audit import AuditLog
from broker.store.jobs import JOBS
from broker.store.pauses import LanePauses
from config.base import parse_end
from tests.databases import DATABASES, empty_database

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.511.8"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite or on a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def test_a_paused_lane_is_not_claimed_until_its_pause_ends(engine: Engine) -> None:
    """While lungai is paused its pending job is not claimed (with or without a capacity) and
    other vendors' are; after ``until`` it is claimed again without anyone resuming it."""
    jobs, pauses = JobStore(engine), LanePauses(engine, JOBS)
    job = jobs.create(STUDY, "lungai", route="r", now=T0).job
    other = jobs.create(STUDY, "ichai", route="r", now=T0).job
    until = T0 + timedelta(hours=1)
    pauses.pause("lungai", actor="cli:ops", until=until, reason="upgrade", now=T0)
    assert jobs.claim_next("lungai", worker="w", now=T0 + timedelta(minutes=1)) is None
    assert (
        jobs.claim_next("lungai", worker="w", capacity=2, now=until - timedelta(seconds=1)) is None
    )
    assert jobs.claim_next("ichai", worker="w", capacity=2, now=T0) is not None
    assert jobs.get(job.id).attempts == 0
    assert set(pauses.current(T0)) == {"lungai"} and pauses.current(until) == {}
    claimed = jobs.claim_next("lungai", worker="w", capacity=2, now=until)
    assert claimed is not None and claimed.id == job.id and other.id != job.id


def test_resume_ends_the_pause_and_both_are_audited(engine: Engine) -> None:
    """A resume lets the lane be claimed at once; resuming a lane that is not paused is
    refused; the audit trail has ``vendor.pause`` (with the reason) and ``vendor.resume``."""
    jobs, pauses = JobStore(engine), LanePauses(engine, JOBS)
    jobs.create(STUDY, "lungai", route="r", now=T0)
    with pytest.raises(LaneNotPausedError):
        pauses.resume("lungai", actor="cli:ops", now=T0)
    pauses.pause("lungai", actor="cli:ops", reason="firmware", now=T0)
    pauses.pause("lungai", actor="token:2 (ops)", reason="firmware, longer", now=T0)
    assert pauses.current(T0 + timedelta(days=30))["lungai"].reason == "firmware, longer"
    assert jobs.claim_next("lungai", worker="w", now=T0) is None
    ended = pauses.resume("lungai", actor="console:alice", now=T0 + timedelta(minutes=5))
    assert ended.by == "token:2 (ops)"
    assert jobs.claim_next("lungai", worker="w", now=T0 + timedelta(minutes=5)) is not None
    trail = AuditLog(engine).list(target="vendor:lungai")
    assert [(e.action, e.actor) for e in reversed(trail)] == [
        ("vendor.pause", "cli:ops"),
        ("vendor.pause", "token:2 (ops)"),
        ("vendor.resume", "console:alice"),
    ]
    assert trail[-1].detail == {"reason": "firmware", "until": None}


def test_pause_end_is_a_duration_or_a_time_in_the_future() -> None:
    """``2h`` counts from now; a time without an offset is in the site's timezone; the past
    and words are refused naming what is valid."""
    now = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert parse_end("1h30m", "UTC", now) == now + timedelta(minutes=90)
    assert parse_end("2024-05-01T18:00", "Asia/Shanghai", now) == datetime(
        2024, 5, 1, 10, 0, tzinfo=UTC
    )
    for bad in ("2024-05-01T07:00Z", "tomorrow", "0s"):
        with pytest.raises(ValueError, match="valid"):
            parse_end(bad, "UTC", now)
