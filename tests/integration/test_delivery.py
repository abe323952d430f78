"""Delivery end to end with real peers: store → bus → worker → dcmtk storescp.

Every test runs twice: on the embedded default (kombu's in-process transport
with SQLite) and scaled out (RabbitMQ on 127.0.0.1:5672 with PostgreSQL).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from broker.engine.bus import Bus
from broker.engine.dispatch import Dispatcher, JobRequest, JobWorker
from broker.engine.plan import FixedPlan, FixedPlans, VendorSpec
from broker.model.domain import Priority
from broker.model.jobs import Job, JobState
from broker.model.vendor import TRANSPORTS
from broker.store import JobStore, make_engine
from broker.store.spool import Spool
from broker.store.tables import job_events
from tests.databases import empty_database
from tests.peers import LOOPBACK, StoreSCP, dataset_bytes, free_port
from tests.spooling import spool_study

S = JobState
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(
    params=[
        pytest.param(("memory://", "sqlite"), id="memory-sqlite"),
        pytest.param(
            (RABBITMQ, "postgresql"),
            id="rabbitmq-postgresql",
            marks=[pytest.mark.rabbitmq, pytest.mark.postgres],
        ),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A store, a spool and a bus with queues of this test's own; all removed afterwards."""
    url, database = request.param
    with empty_database(database, tmp_path) as engine:
        bus = Bus(url, prefix=f"rbtest-{uuid.uuid4().hex[:12]}")
        s = Stack(engine=engine, bus=bus, spool=Spool(tmp_path / "spool"), tmp=tmp_path)
        s.spool.prepare()
        try:
            yield s
        finally:
            s.close()


@dataclass
class Stack:
    engine: Engine
    bus: Bus
    spool: Spool
    tmp: Path
    vendors: dict[str, VendorSpec] = field(default_factory=dict)
    workers: list[JobWorker] = field(default_factory=list)
    peers: list[StoreSCP] = field(default_factory=list)
    stops: list[tuple[threading.Event, threading.Thread]] = field(default_factory=list)
    engines: list[Engine] = field(default_factory=list)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.engine)

    def study(self, kind: Any = "ct_chest", **options: Any) -> tuple[str, list[Path]]:
        """Generate a study, place it in the spool and index it; its UID and spooled files."""
        return spool_study(
            self.engine, self.spool, kind, self.tmp / f"gen-{uuid.uuid4().hex[:8]}", **options
        )

    def vendor(self, name: str, port: int, **spec: Any) -> VendorSpec:
        params = {"ae_title": name.upper(), "host": LOOPBACK, "port": port, "timeout": 10}
        self.vendors[name] = VendorSpec(name=name, transport="dicom", params=params, **spec)
        return self.vendors[name]

    def storescp(self, name: str, port: int | None = None, *extra_args: str) -> StoreSCP:
        folder = self.tmp / f"scp-{name}-{uuid.uuid4().hex[:6]}"
        scp = StoreSCP(folder, ae_title=name.upper(), extra_args=extra_args)
        if port is not None:
            scp.port = port
        self.peers.append(scp.start())
        return scp

    def plans(self) -> FixedPlans:
        """The vendors configured so far, as the engine's plan."""
        transports = {
            name: TRANSPORTS.get(spec.transport).from_params(name, spec.params)
            for name, spec in self.vendors.items()
        }
        return FixedPlans(FixedPlan(vendors=dict(self.vendors), transports=transports))

    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.jobs, self.bus, self.plans())

    def worker(self, engine: Engine | None = None, **options: Any) -> JobWorker:
        """A job worker on the store (through ``engine``: a connection pool of its own)."""
        worker = JobWorker(engine or self.engine, self.bus, self.plans(), **options)
        self.workers.append(worker.start())
        return worker

    def other_engine(self) -> Engine:
        """Another engine on the same store, as another process would have."""
        engine = make_engine(self.engine.url.render_as_string(hide_password=False))
        self.engines.append(engine)
        return engine

    def run_dispatcher(self, dispatcher: Dispatcher) -> None:
        """Run the retry loop in the background (stopped at the end of the test)."""
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run, args=(stop, 0.05), daemon=True)
        thread.start()
        self.stops.append((stop, thread))

    def close(self) -> None:
        for stop, thread in self.stops:
            stop.set()
            thread.join(10)
        for worker in self.workers:
            worker.stop(30)
        for engine in self.engines:
            engine.dispose()
        for scp in self.peers:
            scp.stop()
        try:
            self.bus.delete(self.vendors)
        finally:
            self.bus.close()


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def wait_state(jobs: JobStore, job_id: int, state: JobState, timeout: float = 20.0) -> Job:
    wait_for(f"job {job_id} to be {state}", lambda: jobs.get(job_id).state is state, timeout)
    return jobs.get(job_id)


def assert_same_datasets(sent: list[Path], received: list[Path]) -> None:
    """The vendor holds exactly the sent datasets, byte for byte."""
    want = sorted(dataset_bytes(p) for p in sent)
    got = sorted(dataset_bytes(p) for p in received)
    assert len(got) == len(want)
    assert got == want


def test_study_arrives_byte_for_byte(stack: Stack) -> None:
    """A job's study reaches the vendor's storescp intact; the job waits for the result."""
    scp = stack.storescp("lungai")
    stack.vendor("lungai", scp.port)
    study_uid, files = stack.study("ct_chest", instances=6, rows=64, columns=64)
    stack.worker()
    [created] = stack.dispatcher().dispatch([JobRequest(study_uid, "lungai", route="chest-ct")])
    job = wait_state(stack.jobs, created.job.id, S.AWAITING_RESULT)
    assert job.attempts == 1
    assert_same_datasets(files, scp.files())
    assert [str(e.to_state) for e in stack.jobs.history(job.id)] == [
        "pending",
        "sending",
        "sent",
        "awaiting_result",
    ]


def test_only_the_selected_series_are_sent(stack: Stack) -> None:
    """A job naming series sends only their instances."""
    scp = stack.storescp("neuro")
    stack.vendor("neuro", scp.port)
    study_uid, files = stack.study("mr_brain", instances=2, rows=32, columns=32)
    series = sorted({p.parent.name for p in files})
    assert len(series) == 4
    stack.worker()
    request = JobRequest(study_uid, "neuro", route="mr", series_uids=(series[1],))
    [created] = stack.dispatcher().dispatch([request])
    wait_state(stack.jobs, created.job.id, S.AWAITING_RESULT)
    assert_same_datasets([p for p in files if p.parent.name == series[1]], scp.files())


def test_vendor_down_retries_with_backoff_then_dead_then_operator_retry(stack: Stack) -> None:
    """A vendor that is down: backoff retries, dead after max_attempts, delivered after retry."""
    port = free_port()  # nothing listens here yet
    stack.vendor("lungai", port, max_attempts=3, backoff_base=0.2, backoff_cap=1.0)
    study_uid, files = stack.study("ct_chest", instances=3, rows=32, columns=32)
    dispatcher = stack.dispatcher()
    stack.run_dispatcher(dispatcher)
    stack.worker(jitter=lambda low, high: high)  # the longest wait the backoff allows
    [created] = dispatcher.dispatch([JobRequest(study_uid, "lungai", route="chest-ct")])
    dead = wait_state(stack.jobs, created.job.id, S.DEAD)
    assert dead.attempts == 3
    assert "no association" in (dead.last_error or "")
    history = stack.jobs.history(dead.id)
    assert [(str(e.to_state), e.attempt) for e in history] == [
        ("pending", 0),
        ("sending", 1),
        ("failed", 1),
        ("pending", 1),
        ("sending", 2),
        ("failed", 2),
        ("pending", 2),
        ("sending", 3),
        ("dead", 3),
    ]
    assert all("DicomPushError" in (e.error or "") for e in history if e.to_state is S.FAILED)
    failed_at = [e.at for e in history if e.to_state is S.FAILED]
    requeued_at = [e.at for e in history[3:] if e.to_state is S.PENDING]
    waits = [(b - a).total_seconds() for a, b in zip(failed_at, requeued_at, strict=True)]
    assert 0.2 <= waits[0] < 1.5 and 0.4 <= waits[1] < 2.0  # base 0.2 s, doubling

    scp = stack.storescp("lungai", port=port)  # the vendor comes back
    retried = dispatcher.retry(dead.id)
    assert (retried.state, retried.attempts) == (S.PENDING, 0)
    job = wait_state(stack.jobs, dead.id, S.AWAITING_RESULT)
    assert job.attempts == 1
    assert_same_datasets(files, scp.files())


def test_stat_job_overtakes_waiting_routine_jobs(stack: Stack) -> None:
    """Concurrency 1: a stat job published after routine ones goes before those still queued."""
    scp = stack.storescp("ichai", None, "--sleep-after", "1")  # each job takes 1 s
    stack.vendor("ichai", scp.port, concurrency=1)
    studies = [stack.study("ct_head", instances=1, rows=32, columns=32)[0] for _ in range(5)]
    dispatcher = stack.dispatcher()
    stack.worker()
    [first] = dispatcher.dispatch([JobRequest(studies[0], "ichai", route="head")])
    wait_state(stack.jobs, first.job.id, S.SENDING)
    routine = [JobRequest(uid, "ichai", route="head") for uid in studies[1:4]]
    stat = JobRequest(studies[4], "ichai", route="head-bleed", priority=Priority.STAT)
    ids = [first.job.id, *(c.job.id for c in dispatcher.dispatch([*routine, stat]))]
    for job_id in ids:
        wait_state(stack.jobs, job_id, S.AWAITING_RESULT)
    claims = sorted(
        (e.at, job_id)
        for job_id in ids
        for e in stack.jobs.history(job_id)
        if e.to_state is S.SENDING
    )
    assert [job_id for _, job_id in claims] == [ids[0], ids[4], *ids[1:4]]
    assert len(scp.files()) == 5


def test_vendor_that_aborts_the_association(stack: Stack) -> None:
    """A vendor aborting mid-association fails the attempt; with one attempt the job is dead."""
    scp = stack.storescp("flaky", None, "--abort-after")
    stack.vendor("flaky", scp.port, max_attempts=1)
    study_uid, _ = stack.study("ct_head", instances=2, rows=32, columns=32)
    stack.worker()
    [created] = stack.dispatcher().dispatch([JobRequest(study_uid, "flaky", route="head")])
    dead = wait_state(stack.jobs, created.job.id, S.DEAD)
    assert dead.attempts == 1
    assert "the peer aborted the association" in (dead.last_error or "")


def test_duplicate_message_does_not_deliver_twice(stack: Stack) -> None:
    """Extra queue messages for a job (redelivery, re-publish at start) are dropped by the claim."""
    scp = stack.storescp("lungai")
    stack.vendor("lungai", scp.port, concurrency=2)
    study_uid, files = stack.study("ct_chest", instances=4, rows=32, columns=32)
    [created] = stack.dispatcher().dispatch([JobRequest(study_uid, "lungai", route="chest-ct")])
    job_id = created.job.id
    for _ in range(2):
        stack.bus.publish("lungai", job_id, 1, 0)
    assert stack.bus.depth("lungai") == 3
    worker = stack.worker()
    wait_state(stack.jobs, job_id, S.AWAITING_RESULT)
    wait_for("the queue to drain", lambda: stack.bus.depth("lungai") == 0)
    worker.stop(30)
    assert_same_datasets(files, scp.files())
    sends = [e for e in stack.jobs.history(job_id) if e.to_state is S.SENDING]
    assert len(sends) == 1


def test_restart_resumes_a_job_interrupted_while_sending(stack: Stack) -> None:
    """A job left in sending by a crash is retried after the restart; the history shows both."""
    scp = stack.storescp("lungai")
    stack.vendor("lungai", scp.port)
    study_uid, files = stack.study("ct_chest", instances=3, rows=32, columns=32)
    jobs = stack.jobs
    job = jobs.create(study_uid, "lungai", route="chest-ct").job
    assert jobs.claim(job.id) is not None  # the process dies here, mid-send
    dispatcher = stack.dispatcher()  # the restart
    assert dispatcher.start() == 1
    stack.worker()
    done = wait_state(jobs, job.id, S.AWAITING_RESULT)
    assert done.attempts == 2
    assert_same_datasets(files, scp.files())
    assert [str(e.to_state) for e in jobs.history(job.id)] == [
        "pending",
        "sending",
        "failed",
        "pending",
        "sending",
        "sent",
        "awaiting_result",
    ]


def _sends(jobs: JobStore, job_ids: list[int]) -> list[tuple[int, int, str]]:
    """Each job's send: its claim's and its ``sent`` step's places in the history, and the
    worker. The history's row ids, not its times: a claim's time is taken before it waits
    for the vendor's lane lock, so a claim that had to wait for another job's release can
    carry an earlier time than that release; its row is written after it."""
    e = job_events
    with jobs.engine.connect() as conn:
        rows = conn.execute(
            select(e.c.id, e.c.job_id, e.c.to_state, e.c.worker)
            .where(e.c.job_id.in_(job_ids))
            .order_by(e.c.id)
        ).all()
    sends = []
    for job_id in job_ids:
        history = [r for r in rows if r.job_id == job_id]
        claimed = [r for r in history if r.to_state == S.SENDING.value][-1]
        sent = next(r for r in history if r.to_state == S.SENT.value)
        sends.append((claimed.id, sent.id, claimed.worker or ""))
    return sends


def _most_at_once(sends: list[tuple[int, int, str]]) -> int:
    edges = sorted([(start, 1) for start, _, _ in sends] + [(end, -1) for _, end, _ in sends])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_two_workers_share_a_vendor_within_its_concurrency(stack: Stack) -> None:
    """Two workers (each with its own connection pool) serve one vendor of concurrency 2: both
    send, two jobs go out at once, never three."""
    scp = stack.storescp("lungai", None, "--sleep-after", "1")  # each job takes 1 s
    stack.vendor("lungai", scp.port, concurrency=2)
    studies = [stack.study("ct_chest", instances=1, rows=32, columns=32)[0] for _ in range(8)]
    first, second = stack.worker(), stack.worker(stack.other_engine())
    created = stack.dispatcher().dispatch([JobRequest(uid, "lungai", route="c") for uid in studies])
    ids = [c.job.id for c in created]
    for job_id in ids:
        wait_state(stack.jobs, job_id, S.AWAITING_RESULT, timeout=60)
    sends = _sends(stack.jobs, ids)
    assert _most_at_once(sends) == 2
    assert {worker for _, _, worker in sends} == {first.worker, second.worker}
    assert len(scp.files()) == 8


def test_a_lapsed_claim_is_taken_over_by_another_worker(stack: Stack) -> None:
    """A job claimed by a worker that stopped (on another machine: only its lease tells) is
    taken over once the lease ran out: the attempt counts, and a live worker sends it."""
    scp = stack.storescp("lungai")
    stack.vendor("lungai", scp.port, max_attempts=3)
    study_uid, files = stack.study("ct_chest", instances=2, rows=32, columns=32)
    jobs = stack.jobs
    job = jobs.create(study_uid, "lungai", route="chest-ct").job
    gone = "elsewhere/1/4242/0dead0"
    assert jobs.claim_next("lungai", worker=gone, capacity=1, lease_seconds=1.0) is not None
    dispatcher = stack.dispatcher()
    stack.run_dispatcher(dispatcher)
    live = stack.worker()
    done = wait_state(jobs, job.id, S.AWAITING_RESULT)
    assert done.attempts == 2
    assert_same_datasets(files, scp.files())
    history = jobs.history(job.id)
    assert [(str(e.to_state), e.worker) for e in history] == [
        ("pending", None),
        ("sending", gone),
        ("failed", gone),
        ("pending", None),
        ("sending", live.worker),
        ("sent", live.worker),
        ("awaiting_result", live.worker),
    ]
    assert f"the lease of worker {gone} ran out" in (history[2].error or "")
