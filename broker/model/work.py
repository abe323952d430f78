"""The job engine's pure parts: one state machine for every kind of work item, and backoff.

A vendor job (:mod:`broker.model.jobs`) and a write-back (:mod:`broker.model.writeback`)
are both work items of the same engine: created ``pending``; claimed by one
worker (``sending``, under a lease); then on, or ``failed`` (retried after a
backoff) or ``dead`` (retries exhausted, or an error no retry fixes; an operator
can retry). Each kind has its own states and transitions; a :class:`Machine`
holds them with the named sets the engine works with, and checks every
transition with one message. Pure: no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from broker.model.errors import RadbridgeError


class WorkStateError(RadbridgeError):
    """A work item was asked to move to a state its current state cannot reach."""


S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Machine(Generic[S]):
    """The states of one kind of work item, its transitions, and the states the engine uses.

    ``pending`` is where a claim starts from, ``sending`` where an attempt
    runs (under a lease), ``failed`` waits out a backoff, ``dead`` waits for
    an operator; ``retryable`` are the states an operator's retry starts over
    from.
    """

    noun: str
    """How messages name an item: ``job``, ``delivery``."""
    transitions: Mapping[S, frozenset[S]]
    pending: S
    sending: S
    failed: S
    dead: S
    retryable: frozenset[S]
    error: type[WorkStateError] = WorkStateError
    changed: type[WorkStateError] = WorkStateError
    """Raised when an item changed between reading and writing it (another process moved it)."""

    @property
    def claimable(self) -> frozenset[S]:
        """States a worker claims from: pending only (a failed item is requeued when due)."""
        return frozenset({self.pending})

    @property
    def unfinished(self) -> frozenset[S]:
        """States that still need a worker."""
        return frozenset({self.pending, self.sending, self.failed})

    @property
    def final(self) -> frozenset[S]:
        """States nothing moves an item out of."""
        return frozenset(s for s, nxt in self.transitions.items() if not nxt)

    def check(self, from_state: S, to_state: S) -> None:
        """Raise :attr:`error` unless ``from_state → to_state`` is allowed."""
        allowed = self.transitions[from_state]
        if to_state not in allowed:
            valid = ", ".join(sorted(allowed)) or "none: it is final"
            raise self.error(
                f"a {self.noun} cannot go from {from_state} to {to_state}; "
                f"valid from {from_state}: {valid}"
            )


class WorkItem(Protocol):
    """What the engine needs of any work item."""

    @property
    def id(self) -> int: ...

    @property
    def attempts(self) -> int: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def exhausted(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempts:
    """What every work item holds besides its own fields: its attempts, its retry budget,
    when it is next due, and the claim of the worker whose attempt holds it."""

    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    claimed_by: str | None = None
    """The worker whose attempt holds the item (while ``sending``)."""
    lease_until: datetime | None = None
    """Until when that claim holds unless its worker renews it."""

    @property
    def exhausted(self) -> bool:
        """No attempt is left: a failure now makes the item dead."""
        return self.attempts >= self.max_attempts


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkEvent(Generic[S]):
    """One transition in a work item's history."""

    at: datetime
    from_state: S | None
    to_state: S
    attempt: int
    error: str | None
    snapshot: str | None = None
    """The configuration snapshot the step was taken under (an attempt's plan)."""
    worker: str | None = None
    """The worker that took the step (a claim, an attempt's outcome)."""


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


class LaneNotPausedError(WorkStateError):
    """A resume was asked of a lane that is not paused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LanePause:
    """An operator's pause of a lane (a vendor): its items wait, unclaimed, until it ends.

    Items waiting in a paused lane are neither failed nor retried: pending ones
    stay pending, failed ones go back to pending when their backoff is due and
    wait there; an attempt that was running when the pause began finishes.
    """

    lane: str
    """The lane's name (the vendor)."""
    since: datetime
    until: datetime | None
    """When the pause ends by itself; None: until an operator resumes it."""
    by: str
    reason: str | None

    def active(self, now: datetime) -> bool:
        """Whether the pause holds at ``now``."""
        return self.until is None or self.until > now
