"""Jobs: one per study and vendor product, their states and the allowed transitions.

A job is a work item of the job engine (:mod:`broker.model.work`): the store
(``broker.store.jobs``) persists it and checks every transition against
:data:`MACHINE` before it writes one. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from broker.model.domain import CodedValue, Priority
from broker.model.mode import ShadowCause
from broker.model.work import Attempts, Machine, WorkEvent, WorkStateError
from broker.model.work import backoff as backoff  # noqa: PLC0414 (re-exported)
from broker.model.work import retry_at as retry_at  # noqa: PLC0414 (re-exported)


class JobStateError(WorkStateError):
    """A job was asked to move to a state its current state cannot reach."""


class JobChangedError(JobStateError):
    """The job changed between reading it and writing it (another process moved it, or the
    worker's lease on it expired and another worker took it over)."""


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

#: The job's state machine, as the job engine uses it.
MACHINE: Machine[JobState] = Machine(
    noun="job",
    transitions=TRANSITIONS,
    pending=S.PENDING,
    sending=S.SENDING,
    failed=S.FAILED,
    dead=S.DEAD,
    retryable=frozenset({S.DEAD, S.FAILED}),
    error=JobStateError,
    changed=JobChangedError,
)
#: States a worker claims a job from (a failed one is requeued to pending when due).
CLAIMABLE: frozenset[JobState] = MACHINE.claimable
#: States an operator's retry starts over from.
RETRYABLE: frozenset[JobState] = MACHINE.retryable
#: States that still need a worker: re-announced on the bus after a restart.
UNFINISHED: frozenset[JobState] = MACHINE.unfinished
#: States a job is sent again from when its study was updated (``resend_updates``).
RESENDABLE: frozenset[JobState] = frozenset({S.AWAITING_RESULT, S.DEAD, S.FAILED})
#: States nothing moves a job out of.
FINAL: frozenset[JobState] = MACHINE.final


def check_transition(from_state: JobState, to_state: JobState) -> None:
    """Raise :class:`JobStateError` unless ``from_state → to_state`` is allowed."""
    MACHINE.check(from_state, to_state)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job(Attempts):
    """One study and vendor product to send, as the store holds it (attempts, retry budget
    and claim: :class:`~broker.model.work.Attempts`)."""

    id: int
    study_uid: str
    vendor: str
    route: str
    priority: Priority
    state: JobState
    series_uids: tuple[str, ...]
    """The series to send; empty means every series of the study."""
    deadline_at: datetime | None
    study_revision: int
    shadow: ShadowCause | None = None
    """Why routing made it a shadow job (see :mod:`broker.model.mode`); None: live."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent(WorkEvent[JobState]):
    """One transition in a job's history."""

    job_id: int
