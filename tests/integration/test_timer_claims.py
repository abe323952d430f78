"""Timer claims on SQLite and PostgreSQL: of several nodes on one store, one holds a timer's
turn at a time, renews it while it runs, and another takes it once it lapsed or was given up;
nodes racing for a free turn never both get it; the stable timer judges quiet studies only on
the node holding its turn."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from broker.engine.timer import Turn
from broker.runtime.completion import CompletionStage, StableTimer
from broker.runtime.snapshot import SnapshotHolder, build_snapshot
from broker.store import JobStore, StudyStore
from broker.store.orders import OrderStore
from broker.store.timer_claims import TimerClaims
from config.schema import Settings
from tests.databases import DATABASES, empty_database
from tests.integration.test_store import _rec

# The module's fixtures are set up once: every test of it runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("timer-claims")

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture(params=DATABASES, scope="module")
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A migrated store of each kind, shared by the module (each test claims its own timers)."""
    with empty_database(request.param, tmp_path_factory.mktemp("store")) as eng:
        yield eng


def test_one_holder_at_a_time_until_the_claim_lapses(engine: Engine) -> None:
    """Node a takes the free turn and renews it; node b is refused while a's claim runs, and
    takes it once a stopped renewing for the whole lease; then a is refused."""
    claims = TimerClaims(engine)
    assert claims.hold("results", "a", T0, LEASE)
    assert not claims.hold("results", "b", T0 + timedelta(seconds=1), LEASE)
    assert claims.hold("results", "a", T0 + timedelta(seconds=10), LEASE)
    assert not claims.hold("results", "b", T0 + timedelta(seconds=39), LEASE)
    assert claims.hold("results", "b", T0 + timedelta(seconds=40), LEASE)
    assert not claims.hold("results", "a", T0 + timedelta(seconds=41), LEASE)
    holder, until = claims.holders()["results"]
    assert (holder, until) == ("b", T0 + timedelta(seconds=70))
    assert claims.hold("stable", "a", T0 + timedelta(seconds=41), LEASE)  # timers apart


def test_a_turn_given_up_is_taken_at_once(engine: Engine) -> None:
    """A stopping node gives its turn up: the other node's next ask takes it, without waiting
    for the lease; a turn never held is not given up (the holder's claim stays)."""
    claims = TimerClaims(engine)
    a = Turn(claims, "completion", "a", LEASE.total_seconds())
    b = Turn(claims, "completion", "b", LEASE.total_seconds())
    assert a.held(T0)
    assert not b.held(T0)
    b.release(T0)
    assert claims.holders()["completion"][0] == "a"
    a.release(T0 + timedelta(seconds=2))
    assert b.held(T0 + timedelta(seconds=2))
    assert not a.held(T0 + timedelta(seconds=3))


def test_a_guarded_task_runs_only_on_the_holder(engine: Engine) -> None:
    """The same task guarded on two nodes runs on the holder only (the other's returns no due
    time), and on the other once the holder's claim lapsed."""
    claims = TimerClaims(engine)
    ran: list[str] = []
    a = Turn(claims, "engine", "a", 3.0).guard(lambda now: ran.append("a") or now)
    b = Turn(claims, "engine", "b", 3.0).guard(lambda now: ran.append("b") or now)
    assert a(T0) == T0
    assert b(T0) is None
    assert ran == ["a"]
    later = T0 + timedelta(seconds=3)
    assert b(later) == later
    assert ran == ["a", "b"]


def test_nodes_racing_for_a_free_turn_never_both_get_it(engine: Engine) -> None:
    """Eight holders asking for the same free turn at the same instant: exactly one gets it."""
    claims = TimerClaims(engine)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda n: claims.hold("retention", f"n{n}", T0, LEASE), range(8)))
    assert got.count(True) == 1


def test_the_stable_timer_judges_quiet_studies_only_on_the_node_holding_its_turn(
    engine: Engine,
) -> None:
    """A quiet study past its due time: the stable timer of the node without the completion
    turn neither closes it nor asks to wake for it (the due time is the holder's); the timer
    of the node holding the turn closes it, once."""
    store = StudyStore(engine)
    snapshots = SnapshotHolder(build_snapshot(Settings()))
    completion = CompletionStage(store, OrderStore(engine), JobStore(engine), snapshots)
    claims = TimerClaims(engine)
    now = datetime.now(UTC)
    holder = StableTimer(store, completion, turn=Turn(claims, "completion-t", "a", 30.0))
    other = StableTimer(store, completion, turn=Turn(claims, "completion-t", "b", 30.0))
    assert holder.turn is not None and holder.turn.held(now)
    study_uid = "1.2.826.0.1.3680043.10.511.78"
    store.record_instance(_rec("1.2.78.1", study=study_uid, at=now - timedelta(seconds=20)), 10)
    assert other.tick() == []
    assert other._close_due(now) is None
    assert store.get_study(study_uid).state.value == "receiving"
    assert holder.tick() == [study_uid]
    assert other.tick() == [] and holder.tick() == []
    snapshots.close()
