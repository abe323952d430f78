"""Each job's fetch of priors in the store: asked, done (what came, or why none did), and the
instances a vendor that pulls by manifest may fetch with the job's token.

One row of ``prior_fetches`` per job (a retry sends what the first attempt fetched):
the time ledger stamps priors requested, fetched or skipped from it, and ``routes
explain`` of a stored study says what each job's fetch found. ``prior_instances``
lists the priors' files for radbridge's WADO-RS (:mod:`adapters.web.wado`); their
rows go with the spooled copies once the job is no longer at its vendor
(:meth:`PriorStore.finished`, :meth:`PriorStore.forget`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.model.jobs import Job
from broker.model.priors import PriorsFetched, PriorsOutcome, PriorsPolicy
from broker.model.timeline import Stamp, StampKind
from broker.store.engine import writing
from broker.store.job_tokens import TOKEN_STATES, JobInstance
from broker.store.tables import jobs, prior_fetches, prior_instances
from broker.store.work import utc


@dataclass(frozen=True, slots=True)
class PriorFetch:
    """One job's fetch of priors as the store holds it."""

    job_id: int
    vendor: str
    route: str
    source: str
    asked: int
    requested_at: datetime
    done_at: datetime | None
    outcome: PriorsOutcome | None
    """None while the fetch runs (or when it was interrupted)."""
    studies: int
    instances: int
    note: str | None

    def describe(self) -> str:
        """``priors from pacs: 1 of 3 asked (2 instances)``, or why none came."""
        if self.outcome is None:
            return f"priors asked of {self.source}, no answer recorded yet"
        if self.note:
            return self.note
        return f"priors from {self.source}: {self.studies} of {self.asked} asked"


@dataclass(frozen=True, slots=True)
class PriorStudy:
    """A prior of a job as its manifest lists it: the study and its series."""

    study_uid: str
    series: tuple[tuple[str, int], ...]
    """(series UID, instances), in series order."""


def _fetch(row: Row[Any]) -> PriorFetch:
    return PriorFetch(
        job_id=row.job_id,
        vendor=row.vendor,
        route=row.route,
        source=row.source,
        asked=row.asked,
        requested_at=row.requested_at,
        done_at=row.done_at,
        outcome=PriorsOutcome(row.outcome) if row.outcome else None,
        studies=row.studies,
        instances=row.instances,
        note=row.note,
    )


class PriorStore:
    """Jobs' fetches of priors, and the prior instances their vendors may pull."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def requested(self, job: Job, policy: PriorsPolicy, now: datetime) -> None:
        """The job asks its route's PACS for priors now (a retry's second ask is ignored)."""
        try:
            with writing(self.engine) as conn:
                if conn.execute(
                    select(prior_fetches.c.id).where(prior_fetches.c.job_id == job.id)
                ).first():
                    return
                conn.execute(
                    insert(prior_fetches).values(
                        job_id=job.id,
                        study_uid=job.study_uid,
                        vendor=job.vendor,
                        route=job.route,
                        source=policy.source,
                        asked=policy.count,
                        requested_at=utc(now),
                        studies=0,
                        instances=0,
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the priors asked for job {job.id}: {exc}") from exc

    def done(
        self,
        job: Job,
        fetched: PriorsFetched,
        now: datetime,
        *,
        served: bool = False,
    ) -> None:
        """The fetch ended with ``fetched``; ``served``: its instances are listed for the
        job's WADO-RS (a vendor that pulls by manifest)."""
        outcome = PriorsOutcome.FETCHED if fetched.priors else PriorsOutcome.SKIPPED
        try:
            with writing(self.engine) as conn:
                conn.execute(
                    update(prior_fetches)
                    .where(prior_fetches.c.job_id == job.id)
                    .values(
                        done_at=utc(now),
                        outcome=outcome.value,
                        studies=len(fetched.priors),
                        instances=len(fetched.files),
                        note=fetched.note or None,
                    )
                )
                conn.execute(delete(prior_instances).where(prior_instances.c.job_id == job.id))
                if served:
                    self._serve(conn, job, fetched)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the priors of job {job.id}: {exc}") from exc

    @staticmethod
    def _serve(conn: Connection, job: Job, fetched: PriorsFetched) -> None:
        rows = [
            {
                "job_id": job.id,
                "study_uid": prior.study_uid,
                "series_uid": i.series_uid,
                "sop_instance_uid": i.sop_instance_uid,
                "transfer_syntax_uid": i.transfer_syntax_uid,
                "path": str(i.path),
                "size": i.size,
            }
            for prior in fetched.priors
            for i in prior.instances
        ]
        if rows:
            conn.execute(insert(prior_instances), rows)

    def of_job(self, job_id: int) -> PriorFetch | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(prior_fetches).where(prior_fetches.c.job_id == job_id)
            ).first()
        return None if row is None else _fetch(row)

    def of_jobs(self, job_ids: Iterable[int]) -> dict[int, PriorFetch]:
        """The fetches of these jobs, by job id (jobs that asked for none are absent)."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(prior_fetches).where(prior_fetches.c.job_id.in_(ids)))
            return {r.job_id: _fetch(r) for r in rows}

    def studies(self, job_id: int) -> list[PriorStudy]:
        """The priors a job's vendor may pull, newest fetch order, with their series."""
        stmt = (
            select(prior_instances.c.study_uid, prior_instances.c.series_uid)
            .where(prior_instances.c.job_id == job_id)
            .order_by(prior_instances.c.id)
        )
        found: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for study_uid, series_uid in conn.execute(stmt):
                series = found.setdefault(study_uid, {})
                series[series_uid] = series.get(series_uid, 0) + 1
        return [PriorStudy(uid, tuple(series.items())) for uid, series in found.items()]

    def served(self, job_id: int, study_uid: str) -> bool:
        """Whether ``study_uid`` is one of the priors the job's vendor may pull."""
        stmt = (
            select(prior_instances.c.id)
            .where(prior_instances.c.job_id == job_id, prior_instances.c.study_uid == study_uid)
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def instances(
        self,
        job_id: int,
        study_uid: str,
        *,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[JobInstance]:
        """The instances of the job's prior ``study_uid`` (optionally one series or SOP)."""
        t = prior_instances
        stmt = (
            select(
                t.c.series_uid, t.c.sop_instance_uid, t.c.transfer_syntax_uid, t.c.path, t.c.size
            )
            .where(t.c.job_id == job_id, t.c.study_uid == study_uid)
            .order_by(t.c.id)
        )
        if series_uid is not None:
            stmt = stmt.where(t.c.series_uid == series_uid)
        if sop_instance_uid is not None:
            stmt = stmt.where(t.c.sop_instance_uid == sop_instance_uid)
        with self.engine.connect() as conn:
            return [JobInstance(*r) for r in conn.execute(stmt).all()]

    def finished(self) -> list[int]:
        """Jobs whose served priors may go: the job is no longer at its vendor."""
        stmt = (
            select(prior_instances.c.job_id)
            .join(jobs, jobs.c.id == prior_instances.c.job_id)
            .where(jobs.c.state.not_in([s.value for s in TOKEN_STATES]))
            .distinct()
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def forget(self, job_ids: Sequence[int]) -> None:
        """The served priors of these jobs are gone (their spooled copies removed)."""
        if not job_ids:
            return
        try:
            with writing(self.engine) as conn:
                conn.execute(delete(prior_instances).where(prior_instances.c.job_id.in_(job_ids)))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot forget the priors of jobs {list(job_ids)}: {exc}") from exc


def timeline_stamps(conn: Connection, study_uid: str) -> list[Stamp]:
    """The study's priors in its time ledger: requested, then fetched or skipped, per job."""
    out: list[Stamp] = []
    rows = conn.execute(select(prior_fetches).where(prior_fetches.c.study_uid == study_uid)).all()
    for r in rows:
        fetch = _fetch(r)
        out.append(
            Stamp(
                fetch.requested_at,
                StampKind.PRIORS_REQUESTED,
                fetch.vendor,
                None,
                f"up to {fetch.asked} from {fetch.source}",
                fetch.job_id,
            )
        )
        if fetch.outcome is not None and fetch.done_at is not None:
            kind = (
                StampKind.PRIORS_FETCHED
                if fetch.outcome is PriorsOutcome.FETCHED
                else StampKind.PRIORS_SKIPPED
            )
            out.append(
                Stamp(fetch.done_at, kind, fetch.vendor, None, fetch.describe(), fetch.job_id)
            )
    return out


__all__ = ["PriorFetch", "PriorStore", "PriorStudy", "timeline_stamps"]
