"""What the write-back targets share: their errors, settings validation, and the job they serve."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from broker.model.domain import Priority
from broker.model.errors import AdapterError, ConfigError
from broker.model.jobs import Job, JobState
from broker.model.writeback import WritebackItem


class TargetUnavailableError(AdapterError):
    """The target could not take the result now (down, busy, refused, no ACK); retried."""


class TargetRejectedError(AdapterError):
    """The target refused the result for good, or there is nothing to send; not retried."""


M = TypeVar("M", bound=BaseModel)


def target_settings(model: type[M], target: str, params: Mapping[str, Any]) -> M:
    """A target's settings validated; problems named ``targets.NAME.FIELD``."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        problems = [
            f"targets.{target}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError(problems[0], problems) from exc


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
