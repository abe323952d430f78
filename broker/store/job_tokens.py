"""Per-job tokens (only their SHA-256 is stored) and a job's instances, for WADO-RS pulls."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.model.jobs import Job, JobChangedError, JobState
from broker.store.engine import writing
from broker.store.jobs import _job, _now
from broker.store.tables import instances, job_tokens, jobs

#: States in which a job's token opens its WADO-RS endpoint: being sent, or at the vendor.
TOKEN_STATES: frozenset[JobState] = frozenset(
    {JobState.SENDING, JobState.SENT, JobState.AWAITING_RESULT}
)


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a token: the only form the store keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class JobTokens:
    """Bearer tokens that let a vendor pull one job's study (WADO-RS), and nothing else.

    A job has at most one token: issuing a new one (a new attempt) replaces
    the old. A token works while it has not expired and its job is in
    :data:`TOKEN_STATES`; once the job is done, dead, cancelled or failed it
    opens nothing, whatever its expiry.

    A token issued for a manifest about to be POSTed is marked in flight until
    :meth:`posted` (or, should its sender die, until its ``posting_until``): the
    vendor is told of a cancellation only after the manifest it cancels
    (:meth:`wait_posted`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def issue(
        self,
        job_id: int,
        ttl_seconds: float,
        *,
        posting_seconds: float | None = None,
        now: datetime | None = None,
    ) -> tuple[str, datetime]:
        """A new random token for ``job_id`` valid ``ttl_seconds``; returns it and its expiry.

        ``posting_seconds``: the job's manifest is POSTed now, within that long. The token
        is marked in flight as long, and only while the job is still being sent: a job
        cancelled meanwhile raises :class:`JobChangedError` (post nothing). The job's row
        is locked for the check, so an operator's cancel either comes first (and this
        refuses) or finds the token in flight (and its vendor is told after the POST)."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds is {ttl_seconds}; valid: more than 0")
        now = _now(now)
        token = secrets.token_urlsafe(32)
        expires_at = now + timedelta(seconds=ttl_seconds)
        posting = None if posting_seconds is None else now + timedelta(seconds=posting_seconds)
        try:
            with writing(self.engine) as conn:
                if posting is not None:
                    state = conn.execute(
                        select(jobs.c.state).where(jobs.c.id == job_id).with_for_update()
                    ).scalar_one_or_none()
                    if state != JobState.SENDING.value:
                        raise JobChangedError(
                            f"job {job_id} is {state or 'gone'}, no longer being sent: "
                            "its manifest is not posted"
                        )
                conn.execute(delete(job_tokens).where(job_tokens.c.job_id == job_id))
                conn.execute(
                    insert(job_tokens).values(
                        job_id=job_id,
                        token_sha256=token_digest(token),
                        created_at=now,
                        expires_at=expires_at,
                        posting_until=posting,
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot issue a token for job {job_id}: {exc}") from exc
        return token, expires_at

    def posted(self, job_id: int) -> None:
        """The job's manifest was POSTed (answered or not): it is no longer in flight."""
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(job_tokens)
                    .where(job_tokens.c.job_id == job_id, job_tokens.c.posting_until.is_not(None))
                    .values(posting_until=None)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the manifest of job {job_id} posted: {exc}") from exc

    def posting_until(self, job_id: int, *, now: datetime | None = None) -> datetime | None:
        """Until when the job's manifest may still be on its way; None: it is not."""
        stmt = select(func.max(job_tokens.c.posting_until)).where(
            job_tokens.c.job_id == job_id, job_tokens.c.posting_until > _now(now)
        )
        try:
            with self.engine.connect() as conn:
                until: datetime | None = conn.execute(stmt).scalar_one_or_none()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the token of job {job_id}: {exc}") from exc
        return until

    def wait_posted(self, job_id: int, *, poll: float = 0.1) -> None:
        """Return once the job's manifest is not in flight (POSTed, or its sender gone past
        its ``posting_until``): what cancels it may go to the vendor now."""
        while self.posting_until(job_id) is not None:
            time.sleep(poll)

    def job_for(self, token: str, *, now: datetime | None = None) -> Job | None:
        """The job ``token`` opens now, or None (unknown, expired, or the job is over)."""
        now = _now(now)
        stmt = (
            select(jobs)
            .join(job_tokens, job_tokens.c.job_id == jobs.c.id)
            .where(
                job_tokens.c.token_sha256 == token_digest(token),
                job_tokens.c.expires_at > now,
                jobs.c.state.in_([s.value for s in TOKEN_STATES]),
            )
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).one_or_none()
        return None if row is None else _job(row)

    def revoke(self, job_id: int) -> None:
        """Forget every token of ``job_id``."""
        try:
            with writing(self.engine) as conn:
                conn.execute(delete(job_tokens).where(job_tokens.c.job_id == job_id))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot revoke the tokens of job {job_id}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class JobInstance:
    """One spooled instance of a job's study, as WADO-RS serves it."""

    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str
    size: int


def job_instances(
    engine: Engine,
    job: Job,
    *,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> list[JobInstance]:
    """The instances of ``job`` (its selected series only), optionally of one series or SOP."""
    stmt = (
        select(
            instances.c.series_uid,
            instances.c.sop_instance_uid,
            instances.c.transfer_syntax_uid,
            instances.c.path,
            instances.c.size,
        )
        .where(instances.c.study_uid == job.study_uid)
        .order_by(instances.c.series_uid, instances.c.instance_number, instances.c.id)
    )
    if job.series_uids:
        stmt = stmt.where(instances.c.series_uid.in_(list(job.series_uids)))
    if series_uid is not None:
        stmt = stmt.where(instances.c.series_uid == series_uid)
    if sop_instance_uid is not None:
        stmt = stmt.where(instances.c.sop_instance_uid == sop_instance_uid)
    with engine.connect() as conn:
        return [JobInstance(*r) for r in conn.execute(stmt).all()]
