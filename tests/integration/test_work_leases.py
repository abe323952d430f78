"""The job engine's store on SQLite and PostgreSQL, for both kinds of work item (vendor jobs and
write-back deliveries): claims under leases, renewal, take-over of lapsed claims, a lane's
capacity held over racing workers and processes, and histories naming worker and snapshot."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from broker.model.domain import Priority
from broker.model.work import WorkStateError
from broker.model.writeback import DeliveryKind
from broker.store import make_engine
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.jobs import JobStore
from broker.store.snapshots import SnapshotLog
from broker.store.work import WorkStore
from broker.store.workers import holder_gone, new_worker_id
from tests.databases import DATABASES, empty_database

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.10.511.9"
LANE = "lungai"
Store = WorkStore[Any, Any, Any]


@dataclass
class Kind:
    """One kind of work item: its store, and how a test makes items in a lane."""

    name: str
    store: Callable[[Engine], Store]
    make: Callable[[Store, str, int, bool], int]


def _make_job(store: Store, lane: str, n: int, urgent: bool) -> int:
    assert isinstance(store, JobStore)
    priority = Priority.STAT if urgent else Priority.ROUTINE
    job = store.create(
        f"{STUDY}.{n}", lane, route="r", priority=priority, max_attempts=2, now=T0
    ).job
    return job.id


def _make_delivery(store: Store, lane: str, n: int, urgent: bool) -> int:
    assert isinstance(store, DeliveryStore)
    new = NewDelivery(STUDY, lane, "hl7", DeliveryKind.RESULT, 2, result_id=n, urgent=urgent)
    return store.create([new], now=T0)[0].id


KINDS = [
    pytest.param(Kind("job", JobStore, _make_job), id="jobs"),
    pytest.param(Kind("delivery", DeliveryStore, _make_delivery), id="deliveries"),
]


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite or on a PostgreSQL schema of its own."""
    with empty_database(request.param, tmp_path) as eng:
        yield eng


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    found: Kind = request.param
    return found


def _fill(kind: Kind, store: Store, count: int, lane: str = LANE) -> list[int]:
    return [kind.make(store, lane, n, False) for n in range(count)]


def test_claims_take_urgent_first_then_oldest(database: Engine, kind: Kind) -> None:
    """A lane's claims take an urgent (stat) item before older routine ones, then the oldest."""
    store = kind.store(database)
    routine = [kind.make(store, LANE, n, False) for n in range(2)]
    urgent = kind.make(store, LANE, 9, True)
    claimed = [store.claim_next(LANE, worker="w", now=T0) for _ in range(4)]
    assert [c.id if c else None for c in claimed] == [urgent, *routine, None]


def test_capacity_counts_only_live_leases_of_the_lane(database: Engine, kind: Kind) -> None:
    """With capacity 2 a third claim waits while two leases live; another lane is not held up;
    a finished attempt or a lapsed lease frees a slot."""
    store = kind.store(database)
    _fill(kind, store, 4)
    other = kind.make(store, "ichai", 10, False)

    def claim(worker: str, at: datetime) -> Any:
        return store.claim_next(LANE, worker=worker, capacity=2, lease_seconds=30, now=at)

    first, second = claim("w1", T0), claim("w2", T0)
    assert first is not None and second is not None
    assert claim("w3", T0) is None
    assert store.live_leases(LANE, now=T0) == 2
    assert store.claim_next("ichai", worker="w3", capacity=2, now=T0).id == other
    failed = store.kind.machine.failed
    store.finish(first.id, failed, worker="w1", error="refused", now=T0)
    third = claim("w3", T0 + timedelta(seconds=1))
    assert third is not None
    assert claim("w4", T0 + timedelta(seconds=2)) is None
    # w2's lease ran out (its worker stopped renewing): the slot is free again
    fourth = claim("w4", T0 + timedelta(seconds=31))
    assert fourth is not None and fourth.id not in {first.id, second.id, third.id}


def _race(store: Store, workers: int, attempts: int, capacity: int) -> list[tuple[str, int]]:
    """Many workers claiming at once, none finishing: who got what."""
    barrier = threading.Barrier(workers)
    won: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        barrier.wait()
        for _ in range(attempts):
            item = store.claim_next(LANE, worker=f"w{n}", capacity=capacity)
            if item is not None:
                with lock:
                    won.append((f"w{n}", item.id))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers)))
    return won


def test_racing_workers_on_two_engines_never_exceed_the_capacity(
    database: Engine, kind: Kind
) -> None:
    """Twelve workers on two connection pools (two "processes") race for a lane of capacity 3
    with 20 items waiting: exactly 3 claims succeed, of 3 different items."""
    store = kind.store(database)
    _fill(kind, store, 20)
    second = make_engine(database.url.render_as_string(hide_password=False))
    try:
        stores = [store, kind.store(second)]
        won: list[tuple[str, int]] = []
        with ThreadPoolExecutor(2) as pool:
            for found in pool.map(lambda s: _race(s, 6, 5, 3), stores):
                won += found
    finally:
        second.dispose()
    assert len(won) == 3
    assert len({item for _, item in won}) == 3
    assert store.live_leases(LANE) == 3


def test_workers_that_finish_and_claim_again_stay_within_the_capacity(
    database: Engine, kind: Kind
) -> None:
    """Eight workers claim, hold, finish and claim again until 24 items are done: at no moment
    do more than 2 hold a claim, and every item is attempted exactly once."""
    store = kind.store(database)
    ids = _fill(kind, store, 24)
    second = make_engine(database.url.render_as_string(hide_password=False))
    holding = 0
    most = 0
    attempted: list[int] = []
    lock = threading.Lock()
    dead = store.kind.machine.dead
    deadline = time.monotonic() + 60

    def work(n: int) -> None:
        nonlocal holding, most
        mine = (store, kind.store(second))[n % 2]
        while len(attempted) < len(ids) and time.monotonic() < deadline:
            item = mine.claim_next(LANE, worker=f"w{n}", capacity=2)
            if item is None:
                time.sleep(0.002)
                continue
            with lock:
                holding += 1
                most = max(most, holding)
                attempted.append(item.id)
            time.sleep(0.01)
            with lock:
                holding -= 1
            mine.finish(item.id, dead, worker=f"w{n}", error="end of the test")

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
    finally:
        second.dispose()
    assert 1 <= most <= 2
    assert sorted(attempted) == ids


def _processes() -> Any:
    """Processes of their own (no state shared with this one), forked from a server that
    imported this module once: a spawned process took seconds of imports each."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _claim_in_process(url: str, kind_name: str, start: Any, out: Any) -> None:
    engine = make_engine(url)
    store: Store = JobStore(engine) if kind_name == "job" else DeliveryStore(engine)
    worker = new_worker_id()
    start.wait(30)
    got = [store.claim_next(LANE, worker=worker, capacity=2) for _ in range(10)]
    out.put([item.id for item in got if item is not None])
    engine.dispose()


def test_racing_processes_never_exceed_the_capacity(database: Engine, kind: Kind) -> None:
    """Four processes, each with its own engine, race for a lane of capacity 2: 2 claims win."""
    store = kind.store(database)
    _fill(kind, store, 12)
    context = _processes()
    start, out = context.Event(), context.Queue()
    url = database.url.render_as_string(hide_password=False)
    processes = [
        context.Process(target=_claim_in_process, args=(url, kind.name, start, out))
        for _ in range(4)
    ]
    for p in processes:
        p.start()
    start.set()
    won = [item for _ in processes for item in out.get(timeout=60)]
    for p in processes:
        p.join(30)
    assert len(won) == 2 and len(set(won)) == 2
    assert store.live_leases(LANE) == 2


def test_renewal_keeps_a_claim_and_a_lapsed_one_is_taken_over(database: Engine, kind: Kind) -> None:
    """A renewed lease holds past its first end; once it lapses the claim is taken over: the
    attempt counts (failed, due at once), the old worker can neither renew nor record an
    outcome, and the second lapse of the last attempt makes the item dead."""
    store = kind.store(database)
    [item_id] = _fill(kind, store, 1)
    m = store.kind.machine
    store.claim_next(LANE, worker="w1", lease_seconds=30, now=T0)
    assert store.renew("w1", [item_id], lease_seconds=30, now=T0 + timedelta(seconds=20)) == {
        item_id
    }
    assert store.expire_leases(T0 + timedelta(seconds=40)) == []
    lapsed = T0 + timedelta(seconds=51)
    [taken] = store.expire_leases(lapsed)
    assert (taken.state, taken.attempts, taken.next_attempt_at) == (m.failed, 1, lapsed)
    assert taken.claimed_by is None
    last = store.history(item_id)[-1]
    assert (last.from_state, last.to_state, last.worker) == (m.sending, m.failed, "w1")
    assert "lease of worker w1 ran out" in (last.error or "")
    assert store.renew("w1", [item_id], now=lapsed) == set()
    with pytest.raises(WorkStateError, match="no longer"):
        store.finish(item_id, m.dead, worker="w1", error="late", now=lapsed)
    assert [i.id for i in store.requeue_due(lapsed)] == [item_id]
    again = store.claim_next(LANE, worker="w2", lease_seconds=30, now=lapsed)
    assert again is not None and again.attempts == 2 and again.claimed_by == "w2"
    [dead] = store.expire_leases(lapsed + timedelta(seconds=31))
    assert dead.state is m.dead and dead.attempts == 2


def _put_worker_id(out: Any) -> None:
    out.put(new_worker_id())


def _dead_worker_id() -> str:
    """The worker id of a process of this machine that has ended."""
    context = _processes()
    out = context.Queue()
    process = context.Process(target=_put_worker_id, args=(out,))
    process.start()
    worker: str = out.get(timeout=60)
    process.join(30)
    return worker


def test_a_start_takes_over_claims_of_ended_processes_at_once(database: Engine, kind: Kind) -> None:
    """After a restart, claims whose worker process of this machine has ended (or that name no
    worker) are taken over before their lease ends; a live worker's claim and a claim of a
    worker on another machine wait for their lease."""
    store = kind.store(database)
    ids = _fill(kind, store, 4)
    dead, live, remote = _dead_worker_id(), new_worker_id(), "otherhost/1/4242/abcd"
    assert holder_gone(dead) and not holder_gone(live) and not holder_gone(remote)
    for worker in (dead, live, remote, None):
        store.claim_next(LANE, worker=worker, lease_seconds=600, now=T0)
    taken = store.recover_interrupted(now=T0 + timedelta(seconds=1))
    assert sorted(i.id for i in taken) == [ids[0], ids[3]]
    errors = {i.id: i.last_error or "" for i in taken}
    assert f"worker {dead} stopped" in errors[ids[0]]
    assert "process stopped" in errors[ids[3]]
    assert store.live_leases(LANE, now=T0 + timedelta(seconds=1)) == 2


def test_history_names_the_worker_and_the_snapshot(database: Engine, kind: Kind) -> None:
    """The claim and the outcome rows say which worker took them under which snapshot."""
    store = kind.store(database)
    [item_id] = _fill(kind, store, 1)
    store.claim_next(LANE, worker="w1", snapshot="cfg-one", now=T0)
    store.finish(item_id, store.kind.machine.failed, worker="w1", snapshot="cfg-two", now=T0)
    rows = [(e.to_state.value, e.worker, e.snapshot) for e in store.history(item_id)]
    assert rows == [
        ("pending", None, None),
        ("sending", "w1", "cfg-one"),
        ("failed", "w1", "cfg-two"),
    ]


def test_steps_outside_an_attempt_name_the_snapshot_in_force(database: Engine, kind: Kind) -> None:
    """An operator's retry (from the CLI, the API or the console: no plan at hand) names the
    snapshot the service put in force last."""
    store = kind.store(database)
    [item_id] = _fill(kind, store, 1)
    store.claim_next(LANE, worker="w1", now=T0)
    store.finish(item_id, store.kind.machine.dead, worker="w1", snapshot="cfg-old", now=T0)
    SnapshotLog(database).record(
        snapshot="cfg-in-force",
        previous=None,
        loaded_at=T0,
        trigger="start",
        source=None,
        config="{}",
    )
    store.retry(item_id, now=T0 + timedelta(seconds=1))
    last = store.history(item_id)[-1]
    assert (last.to_state, last.snapshot, last.error) == (
        store.kind.machine.pending,
        "cfg-in-force",
        "retried by the operator",
    )
