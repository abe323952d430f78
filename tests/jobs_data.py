"""A job as a transport sees it mid-send, for vendor transport tests."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.model.domain import Priority
from broker.model.jobs import Job, JobState

NOW = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def sending_job(job_id: int = 1, vendor: str = "lungai", study_uid: str = "1.2.3") -> Job:
    """Job ``job_id`` for ``vendor``, in its first attempt of three."""
    return Job(
        id=job_id,
        study_uid=study_uid,
        vendor=vendor,
        route="r",
        priority=Priority.ROUTINE,
        state=JobState.SENDING,
        attempts=1,
        max_attempts=3,
        series_uids=(),
        deadline_at=None,
        next_attempt_at=None,
        last_error=None,
        created_at=NOW,
        updated_at=NOW,
        study_revision=1,
    )
