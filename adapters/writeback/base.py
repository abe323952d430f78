"""What the write-back targets share: the two kinds of failure, and the job they serve.

Each target type is one module of this package: a settings model that
subclasses :class:`broker.model.target.TargetSettings` and declares the
type's name, and the running :class:`~broker.model.target.WritebackTarget`.
It is registered by an entry point of ``radbridge.targets`` in ``pyproject.toml``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from broker.model.domain import Priority
from broker.model.errors import AdapterError
from broker.model.jobs import Job, JobState
from broker.model.writeback import WritebackItem


class TargetUnavailableError(AdapterError):
    """The target could not take the result now (down, busy, refused, no ACK); retried."""


class TargetRejectedError(AdapterError):
    """The target refused the result for good, or there is nothing to send; not retried."""


def job_of(item: WritebackItem) -> Job:
    """The job to name in a vendor transport's messages (a stand-in when there is none)."""
    if item.job is not None:
        return item.job
    d = item.delivery
    now = datetime.now(UTC)
    return Job(
        id=d.job_id or 0,
        study_uid=d.study_uid,
        vendor=item.result.vendor or "" if item.result else "",
        route=item.route or "",
        priority=Priority.ROUTINE,
        state=JobState.WRITING_BACK,
        attempts=d.attempts,
        max_attempts=d.max_attempts,
        series_uids=(),
        deadline_at=None,
        next_attempt_at=None,
        last_error=None,
        created_at=now,
        updated_at=now,
        study_revision=0,
    )
