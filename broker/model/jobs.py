"""Jobs: one per study and vendor product, their states, the allowed transitions, and backoff.

Pure: no I/O. The store (``broker.store.jobs``) persists jobs and checks every
transition against :data:`TRANSITIONS` before it writes one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.model.domain import CodedValue, Priority
from broker.model.errors import RadbridgeError


class JobStateError(RadbridgeError):
    """A job was asked to move to a state its current state cannot reach."""


class JobState(CodedValue):
    """Where a job is; see DESIGN.md. Accepts its value in any case."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    AWAITING_RESULT = "awaiting_result"
    RESULT_RECEIVED = "result_received"
    WRITING_BACK = "writing_back"
    DONE = "done"
    FAILED = "failed"
    """The last attempt failed; the job will be retried after its backoff."""
    DEAD = "dead"
    """Retries exhausted, or an error no retry can fix; an operator can retry."""
    CANCELLED = "cancelled"


S = JobState

#: Every allowed transition: a state maps to the states it may move to.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.SENDING, S.CANCELLED}),
    S.SENDING: frozenset({S.SENT, S.FAILED, S.DEAD, S.CANCELLED}),
    S.SENT: frozenset({S.AWAITING_RESULT, S.CANCELLED}),
    # -> PENDING: the study was updated and its route resends updates.
    S.AWAITING_RESULT: frozenset({S.RESULT_RECEIVED, S.PENDING, S.DEAD, S.CANCELLED}),
    S.RESULT_RECEIVED: frozenset({S.WRITING_BACK, S.CANCELLED}),
    S.WRITING_BACK: frozenset({S.DONE, S.DEAD}),
    S.FAILED: frozenset({S.PENDING, S.SENDING, S.DEAD, S.CANCELLED}),
    # -> WRITING_BACK: an operator retried the write-back that made the job dead.
    S.DEAD: frozenset({S.PENDING, S.WRITING_BACK, S.CANCELLED}),
    S.DONE: frozenset(),
    S.CANCELLED: frozenset(),
}

#: States a worker may claim a job from (to start an attempt).
CLAIMABLE: frozenset[JobState] = frozenset({S.PENDING, S.FAILED})
#: States an operator's retry starts over from.
RETRYABLE: frozenset[JobState] = frozenset({S.DEAD, S.FAILED})
#: States that still need the bus: re-enqueued after a restart.
UNFINISHED: frozenset[JobState] = frozenset({S.PENDING, S.SENDING, S.FAILED})
#: States a job is sent again from when its study was updated (``resend_updates``).
RESENDABLE: frozenset[JobState] = frozenset({S.AWAITING_RESULT, S.DEAD, S.FAILED})
#: States nothing moves a job out of.
FINAL: frozenset[JobState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check_transition(from_state: JobState, to_state: JobState) -> None:
    """Raise :class:`JobStateError` unless ``from_state → to_state`` is allowed."""
    allowed = TRANSITIONS[from_state]
    if to_state not in allowed:
        valid = ", ".join(sorted(allowed)) or "none: it is final"
        raise JobStateError(
            f"a job cannot go from {from_state} to {to_state}; valid from {from_state}: {valid}"
        )


def backoff(
    attempt: int,
    base: float,
    cap: float,
    jitter: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before the attempt after ``attempt``: exponential, full jitter.

    The ceiling is ``min(cap, base * 2 ** (attempt - 1))``; the wait is drawn
    uniformly between 0 and that ceiling (``jitter`` is ``random.uniform``
    unless a test injects another).
    """
    if attempt < 1:
        raise ValueError(f"attempt is {attempt}; valid: 1 or more")
    if base < 0 or cap < 0:
        raise ValueError(f"base {base} and cap {cap} must not be negative")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return float(jitter(0.0, ceiling))


def retry_at(
    now: datetime,
    attempt: int,
    base: float,
    cap: float,
    jitter: Callable[[float, float], float] = random.uniform,
) -> datetime:
    """When the attempt after ``attempt`` may start (see :func:`backoff`)."""
    return now + timedelta(seconds=backoff(attempt, base, cap, jitter))


@dataclass(frozen=True, slots=True)
class Job:
    """One study and vendor product to deliver, as the store holds it."""

    id: int
    study_uid: str
    vendor: str
    route: str
    priority: Priority
    state: JobState
    attempts: int
    max_attempts: int
    series_uids: tuple[str, ...]
    """The series to send; empty means every series of the study."""
    deadline_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    study_revision: int

    @property
    def exhausted(self) -> bool:
        """No attempt is left: a failure now makes the job dead."""
        return self.attempts >= self.max_attempts


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One transition in a job's history."""

    job_id: int
    at: datetime
    from_state: JobState | None
    to_state: JobState
    attempt: int
    error: str | None
