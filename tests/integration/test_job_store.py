"""The job store on SQLite and PostgreSQL: idempotent creation, claims, history, recovery."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from broker.model.domain import Priority
from broker.model.errors import NotFoundError
from broker.model.jobs import JobState, JobStateError
from broker.store import JobStore, StudyStore
from tests.databases import DATABASES, empty_database
from tests.integration.test_store import _rec

S = JobState
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.511.7"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite or on a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


@pytest.fixture
def jobs(engine: Engine) -> JobStore:
    return JobStore(engine)


def _states(jobs: JobStore, job_id: int) -> list[tuple[str | None, str, int]]:
    return [
        (str(e.from_state) if e.from_state else None, str(e.to_state), e.attempt)
        for e in jobs.history(job_id)
    ]


def test_create_is_idempotent_per_study_and_vendor(jobs: JobStore) -> None:
    """A second create for the same study and vendor returns the first job, flagged duplicate."""
    first = jobs.create(
        STUDY,
        "lungai",
        route="chest-ct",
        priority=Priority.URGENT,
        max_attempts=3,
        series_uids=("1.2.3", "1.2.4"),
        deadline_at=T0 + timedelta(minutes=15),
        study_revision=2,
        now=T0,
    )
    again = jobs.create(STUDY, "lungai", route="other-route", now=T0 + timedelta(seconds=5))
    other = jobs.create(STUDY, "ichai", route="head-ct", now=T0)
    assert not first.duplicate and again.duplicate and not other.duplicate
    assert again.job == first.job
    job = first.job
    assert (job.state, job.attempts, job.max_attempts, job.priority) == (
        S.PENDING,
        0,
        3,
        Priority.URGENT,
    )
    assert job.series_uids == ("1.2.3", "1.2.4") and job.route == "chest-ct"
    assert job.deadline_at == T0 + timedelta(minutes=15) and job.study_revision == 2
    assert job.created_at == T0 and job.updated_at == T0
    assert _states(jobs, job.id) == [(None, "pending", 0)]
    assert jobs.get(job.id) == job
    assert jobs.find(STUDY, "ichai") == other.job


def test_claim_takes_a_pending_job_once(jobs: JobStore) -> None:
    """Only the first claim of a pending job wins (a duplicate wake-up gets None)."""
    job = jobs.create(STUDY, "lungai", route="r", now=T0).job
    claimed = jobs.claim(job.id, worker="w1", now=T0)
    assert claimed is not None and claimed.state is S.SENDING and claimed.attempts == 1
    assert claimed.claimed_by == "w1" and claimed.lease_until is not None
    assert jobs.claim(job.id, worker="w2", now=T0) is None
    assert jobs.claim(job.id, now=T0) is None
    assert _states(jobs, job.id) == [(None, "pending", 0), ("pending", "sending", 1)]
    assert jobs.history(job.id)[-1].worker == "w1"


def test_concurrent_claims_have_one_winner(jobs: JobStore) -> None:
    """Eight workers claiming the same job at once: exactly one gets it."""
    job = jobs.create(STUDY, "lungai", route="r", now=T0).job
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: jobs.claim(job.id, worker=f"w{n}"), range(8)))
    assert sum(r is not None for r in results) == 1
    assert jobs.get(job.id).attempts == 1


def test_failed_job_is_claimed_only_after_its_backoff_and_requeue(jobs: JobStore) -> None:
    """A failed job is not claimable; once its backoff passed the timer's requeue makes it
    pending again, and the next claim is its next attempt."""
    job = jobs.create(STUDY, "lungai", route="r", now=T0).job
    assert jobs.claim(job.id, now=T0) is not None
    retry_at = T0 + timedelta(seconds=30)
    failed = jobs.finish(job.id, S.FAILED, error="refused", next_attempt_at=retry_at, now=T0)
    assert failed.state is S.FAILED and failed.last_error == "refused"
    assert failed.claimed_by is None and failed.lease_until is None
    assert jobs.claim(job.id, now=retry_at) is None  # failed: not claimable
    assert jobs.requeue_due(T0 + timedelta(seconds=1)) == []  # too early
    assert [j.id for j in jobs.requeue_due(retry_at)] == [job.id]
    again = jobs.claim_next("lungai", now=retry_at)
    assert again is not None and again.attempts == 2 and again.next_attempt_at is None


def test_finish_records_every_step_and_refuses_invalid_ones(jobs: JobStore) -> None:
    """A path of states is one transaction with one event per step; a bad step changes nothing."""
    job = jobs.create(STUDY, "lungai", route="r", now=T0).job
    jobs.claim(job.id, now=T0)
    done = jobs.finish(job.id, [S.SENT, S.AWAITING_RESULT], now=T0 + timedelta(seconds=2))
    assert done.state is S.AWAITING_RESULT and done.updated_at == T0 + timedelta(seconds=2)
    with pytest.raises(JobStateError, match="cannot go from result_received to sent"):
        jobs.finish(job.id, [S.RESULT_RECEIVED, S.SENT])
    assert jobs.get(job.id).state is S.AWAITING_RESULT
    assert _states(jobs, job.id) == [
        (None, "pending", 0),
        ("pending", "sending", 1),
        ("sending", "sent", 1),
        ("sent", "awaiting_result", 1),
    ]
    with pytest.raises(NotFoundError, match="no job with id 999"):
        jobs.finish(999, S.SENT)


def test_due_retries_requeue_and_next_retry(jobs: JobStore) -> None:
    """Failed jobs become due when their backoff ends; requeue moves them to pending once."""
    a = jobs.create(STUDY, "a", route="r", now=T0).job
    b = jobs.create(STUDY, "b", route="r", now=T0).job
    for job, wait in ((a, 10), (b, 60)):
        jobs.claim(job.id, now=T0)
        jobs.finish(job.id, S.FAILED, error="x", next_attempt_at=T0 + timedelta(seconds=wait))
    assert jobs.next_retry_at() == T0 + timedelta(seconds=10)
    later = T0 + timedelta(seconds=20)
    assert [j.id for j in jobs.due_retries(later)] == [a.id]
    moved = jobs.requeue_due(later)
    assert [(j.id, j.state, j.attempts) for j in moved] == [(a.id, S.PENDING, 1)]
    assert jobs.requeue_due(later) == []
    assert _states(jobs, a.id)[-1] == ("failed", "pending", 1)


def test_operator_retry_and_cancel(jobs: JobStore) -> None:
    """Retry starts a dead job over with attempts reset; cancel is final and says why."""
    job = jobs.create(STUDY, "lungai", route="r", max_attempts=1, now=T0).job
    jobs.claim(job.id, now=T0)
    dead = jobs.finish(job.id, S.DEAD, error="association rejected", now=T0)
    assert dead.state is S.DEAD and dead.attempts == 1
    retried = jobs.retry(job.id, now=T0 + timedelta(minutes=5))
    assert (retried.state, retried.attempts, retried.last_error) == (S.PENDING, 0, None)
    with pytest.raises(JobStateError, match="is pending; only a dead or failed job can be retried"):
        jobs.retry(job.id)
    cancelled = jobs.cancel(job.id, reason="order cancelled by the RIS")
    assert cancelled.state is S.CANCELLED
    with pytest.raises(JobStateError, match="cannot go from cancelled to cancelled"):
        jobs.cancel(job.id)
    history = jobs.history(job.id)
    assert [str(e.to_state) for e in history] == [
        "pending",
        "sending",
        "dead",
        "pending",
        "cancelled",
    ]
    assert history[2].error == "association rejected"
    assert history[-1].error == "order cancelled by the RIS"


def test_unfinished_after_a_crash_in_sending(jobs: JobStore) -> None:
    """A job left in sending by a crash counts its attempt and becomes failed (or dead if last)."""
    a = jobs.create(STUDY, "a", route="r", max_attempts=3, now=T0).job
    b = jobs.create(STUDY, "b", route="r", max_attempts=1, now=T0).job
    c = jobs.create(STUDY, "c", route="r", now=T0).job
    d = jobs.create(STUDY, "d", route="r", now=T0).job
    for job in (a, b, d):
        jobs.claim(job.id, now=T0)
    jobs.finish(d.id, [S.SENT, S.AWAITING_RESULT], now=T0)
    # the process is killed here: a and b are still "sending"
    assert {j.id for j in jobs.unfinished()} == {a.id, b.id, c.id}
    restart = T0 + timedelta(minutes=1)
    recovered = {j.id: j for j in jobs.recover_interrupted(now=restart)}
    assert (recovered[a.id].state, recovered[a.id].attempts) == (S.FAILED, 1)
    assert recovered[a.id].next_attempt_at == restart
    assert (recovered[b.id].state, recovered[b.id].attempts) == (S.DEAD, 1)
    assert "interrupted" in (jobs.history(a.id)[-1].error or "")
    assert {j.id for j in jobs.unfinished()} == {a.id, c.id}
    assert jobs.recover_interrupted(now=restart) == []


def test_list_filters_by_state_and_vendor(jobs: JobStore) -> None:
    """list() filters by one or several states, by vendor and by study."""
    ids = [jobs.create(f"{STUDY}.{n}", v, route="r", now=T0).job.id for n, v in enumerate("aab")]
    jobs.claim(ids[0], now=T0)
    assert [j.id for j in jobs.list(vendor="a")] == ids[:2]
    assert [j.id for j in jobs.list(state=S.PENDING)] == ids[1:]
    assert [j.id for j in jobs.list(state=[S.SENDING, S.PENDING], vendor="a")] == ids[:2]
    assert [j.id for j in jobs.list(study_uid=f"{STUDY}.2")] == [ids[2]]


def test_instance_paths_filtered_by_series(engine: Engine) -> None:
    """A job's files: the whole study, or only the series it names, in instance order."""
    studies = StudyStore(engine)
    for sop, series_uid, number in (("9.1", "8.1", 2), ("9.2", "8.1", 1), ("9.3", "8.2", 1)):
        studies.record_instance(
            _rec(sop, study="7.1", series_uid=series_uid, instance_number=number), 1.0
        )
    names = lambda paths: [Path(p).stem for p in paths]  # noqa: E731
    assert names(StudyStore(engine).instance_paths("7.1")) == ["9.2", "9.1", "9.3"]
    assert names(StudyStore(engine).instance_paths("7.1", ["8.2"])) == ["9.3"]
    assert StudyStore(engine).instance_paths("7.9") == []


def test_operator_retry_is_taken_for_publishing_exactly_once(jobs: JobStore) -> None:
    """A job retried by an operator (from any process) is handed to the dispatcher once."""
    job = jobs.create(STUDY, "lungai", route="r", max_attempts=1, now=T0).job
    jobs.claim(job.id, now=T0)
    jobs.finish(job.id, S.DEAD, error="down", now=T0)
    later = T0 + timedelta(minutes=1)
    jobs.retry(job.id, now=later)
    assert [j.id for j in jobs.take_released(later)] == [job.id]
    assert jobs.take_released(later + timedelta(seconds=1)) == []
    assert jobs.get(job.id).state is S.PENDING


def test_resend_sends_an_updated_study_again(jobs: JobStore) -> None:
    """An awaiting job is sent again for a newer study revision, with the reason in its history."""
    job = jobs.create(STUDY, "lungai", route="r", study_revision=1, now=T0).job
    jobs.claim(job.id, now=T0)
    jobs.finish(job.id, S.SENT, now=T0)
    jobs.finish(job.id, S.AWAITING_RESULT, now=T0)
    again = jobs.resend(job.id, study_revision=2, series_uids=["1.2.3.4"], now=T0)
    assert (again.state, again.attempts, again.study_revision) == (S.PENDING, 0, 2)
    assert again.series_uids == ("1.2.3.4",)
    assert "revision 2" in (jobs.history(job.id)[-1].error or "")
