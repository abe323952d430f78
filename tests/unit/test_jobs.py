"""Jobs and write-backs as pure values: states, transitions, one machine, priorities, backoff."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from broker.model.domain import Priority
from broker.model.errors import RadbridgeError
from broker.model.jobs import (
    FINAL,
    TRANSITIONS,
    JobState,
    JobStateError,
    backoff,
    check_transition,
)
from broker.model.jobs import MACHINE as JOB_MACHINE
from broker.model.work import Machine, WorkStateError
from broker.model.writeback import MACHINE as DELIVERY_MACHINE

S = JobState


def test_every_state_has_its_transitions() -> None:
    """The transition table names every state, and only states."""
    assert set(TRANSITIONS) == set(JobState)
    assert all(nxt <= set(JobState) for nxt in TRANSITIONS.values())


def test_happy_path_is_allowed() -> None:
    """pending → sending → sent → awaiting_result → result_received → writing_back → done."""
    path = [
        S.PENDING,
        S.SENDING,
        S.SENT,
        S.AWAITING_RESULT,
        S.RESULT_RECEIVED,
        S.WRITING_BACK,
        S.DONE,
    ]
    for a, b in itertools.pairwise(path):
        check_transition(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.SENDING, S.FAILED),
        (S.FAILED, S.PENDING),
        (S.FAILED, S.SENDING),
        (S.SENDING, S.DEAD),
        (S.DEAD, S.PENDING),
        (S.PENDING, S.CANCELLED),
        (S.AWAITING_RESULT, S.CANCELLED),
    ],
)
def test_retry_and_cancel_transitions_are_allowed(a: JobState, b: JobState) -> None:
    """Failures retry, dead jobs can be retried, unfinished jobs can be cancelled."""
    check_transition(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.PENDING, S.SENT),
        (S.DONE, S.PENDING),
        (S.CANCELLED, S.PENDING),
        (S.SENT, S.SENDING),
        (S.PENDING, S.DONE),
        (S.DEAD, S.SENDING),
    ],
)
def test_forbidden_transitions_raise(a: JobState, b: JobState) -> None:
    """A skipped or backward step raises JobStateError naming what would have been valid."""
    with pytest.raises(JobStateError, match=f"cannot go from {a} to {b}; valid from {a}"):
        check_transition(a, b)


def test_final_states_and_error_hierarchy() -> None:
    """done and cancelled are final; JobStateError is a RadbridgeError."""
    assert frozenset({S.DONE, S.CANCELLED}) == FINAL
    with pytest.raises(RadbridgeError, match="none: it is final"):
        check_transition(S.DONE, S.DEAD)


def test_enums_accept_their_strings() -> None:
    """States and priorities accept their value in any case."""
    assert JobState("Awaiting-Result") is S.AWAITING_RESULT
    assert Priority("STAT") is Priority.STAT
    with pytest.raises(ValueError):
        Priority("asap")


def test_priorities_map_to_bus_priorities() -> None:
    """stat, urgent and routine become kombu priorities 9, 5 and 0."""
    assert [p.bus_priority for p in Priority] == [9, 5, 0]


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    """With jitter at its maximum, the wait is base·2^(n-1), capped."""
    high = lambda lo, hi: hi  # noqa: E731
    assert [backoff(n, 2.0, 30.0, high) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert backoff(500, 2.0, 30.0, high) == 30.0


def test_backoff_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    """Full jitter: the injected random source is asked for a value in [0, ceiling]."""
    calls: list[tuple[float, float]] = []

    def jitter(lo: float, hi: float) -> float:
        calls.append((lo, hi))
        return (lo + hi) / 2

    assert backoff(3, 1.0, 100.0, jitter) == 2.0
    assert calls == [(0.0, 4.0)]
    values = {backoff(4, 1.0, 100.0) for _ in range(200)}
    assert all(0.0 <= v <= 8.0 for v in values) and len(values) > 100


def test_backoff_rejects_nonsense() -> None:
    """Attempt numbers start at 1; negative times are refused."""
    with pytest.raises(ValueError, match="valid: 1 or more"):
        backoff(0, 1.0, 10.0)
    with pytest.raises(ValueError, match="must not be negative"):
        backoff(1, -1.0, 10.0)


@pytest.mark.parametrize(
    ("machine", "noun"),
    [(JOB_MACHINE, "job"), (DELIVERY_MACHINE, "delivery")],
    ids=["jobs", "write-backs"],
)
def test_jobs_and_write_backs_run_on_one_machine_shape(machine: Machine[Any], noun: str) -> None:
    """Both kinds of work item: claimed from pending only, requeued failed → pending, retried
    by an operator from dead or failed, unfinished while pending, sending or failed; a bad
    step names the item's noun and what would have been valid."""
    m = machine
    assert m.claimable == {m.pending}
    assert m.retryable == {m.dead, m.failed}
    assert m.unfinished == {m.pending, m.sending, m.failed}
    for a, b in [(m.pending, m.sending), (m.sending, m.failed), (m.failed, m.pending)]:
        m.check(a, b)
    m.check(m.sending, m.dead)
    m.check(m.dead, m.pending)
    with pytest.raises(WorkStateError, match=f"a {noun} cannot go from pending to failed"):
        m.check(m.pending, m.failed)
    assert issubclass(m.changed, m.error) and issubclass(m.error, RadbridgeError)
