"""Pages of studies, jobs and orders for the REST API: filtered, newest first, keyset paged.

Each page query walks an index in order and stops after ``limit`` rows, so the
first page, a filtered page and the thousandth page cost the same (no
OFFSET). The key of the last row of a page is the cursor of the next one.
Indexes: ``studies (last_received_at)`` and ``(state, last_received_at)``;
``jobs (state, id)``, ``(vendor, state, id)`` and ``(created_at)``;
``orders (updated_at)`` (migrations 0001 to 0007); ``results (vendor, id)``,
``(state, id)``, ``(study_uid)`` and ``(job_id)``; ``deliveries (state, id)``,
``(target, id)`` and ``(result_id, …)`` (migration 0009).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, exists, literal, select, tuple_

from broker.model.canary import CANARY_ROUTE
from broker.model.domain import Result, ResultState, StoredOrder, Study, StudyState
from broker.model.jobs import Job, JobState
from broker.model.writeback import Delivery, DeliveryState
from broker.store.deliveries import _delivery
from broker.store.jobs import JOBS, _job
from broker.store.orders import _order
from broker.store.overview import job_counts
from broker.store.results import _build as _build_results
from broker.store.studies import StudyStore, of_sites
from broker.store.tables import (
    deliveries,
    job_events,
    jobs,
    orders,
    results,
    series,
    studies,
)
from broker.store.work import lane_outcomes

#: A page's position: the sort key of the last row of the page before.
TimeKey = tuple[datetime, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyFilter:
    state: StudyState | None = None
    modality: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    since: datetime | None = None
    """Last received at or after."""
    until: datetime | None = None
    """Last received before."""
    sites: frozenset[str] | None = None
    """Only studies of these sites (a site-scoped caller); None: every site's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs to list. A list by state is an operator's queue (the dead jobs to retry, the
    failed ones): canary jobs are not in it unless it names their study or their route
    (:func:`~broker.store.overview.job_counts` leaves them out of the counts the same way)."""

    states: Sequence[JobState] = ()
    vendor: str | None = None
    study_uid: str | None = None
    route: str | None = None
    since: datetime | None = None
    """Created at or after."""
    until: datetime | None = None
    """Created before."""
    sites: frozenset[str] | None = None
    """Only studies of these sites (a site-scoped caller); None: every site's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultFilter:
    study_uid: str | None = None
    vendor: str | None = None
    state: ResultState | None = None
    orphan: bool | None = None
    """True: only results that matched no job; False: only those that did."""
    sites: frozenset[str] | None = None
    """Only studies of these sites (a site-scoped caller); None: every site's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryFilter:
    states: Sequence[DeliveryState] = ()
    target: str | None = None
    result_id: int | None = None
    job_id: int | None = None
    sites: frozenset[str] | None = None
    """Only deliveries of these sites' studies; None: every site's."""


def _time_page(stmt: Select[Any], column: Any, id_column: Any, after: TimeKey | None) -> Any:
    if after is not None:
        bound = tuple_(literal(after[0], column.type), literal(after[1], id_column.type))
        stmt = stmt.where(tuple_(column, id_column) < bound)
    return stmt.order_by(column.desc(), id_column.desc())


class Listing:
    """Read-only pages over the store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._studies = StudyStore(engine)

    def studies(
        self, f: StudyFilter, *, after: TimeKey | None = None, limit: int = 100
    ) -> list[Study]:
        """Studies by last activity, newest first, with their series."""
        stmt = select(studies)
        if f.sites is not None:
            stmt = stmt.where(studies.c.site.in_(sorted(f.sites)))
        if f.state is not None:
            stmt = stmt.where(studies.c.state == f.state.value)
        if f.accession_number is not None:
            stmt = stmt.where(studies.c.accession_number == f.accession_number)
        if f.patient_id is not None:
            stmt = stmt.where(studies.c.patient_id == f.patient_id)
        if f.since is not None:
            stmt = stmt.where(studies.c.last_received_at >= f.since)
        if f.until is not None:
            stmt = stmt.where(studies.c.last_received_at < f.until)
        if f.modality is not None:
            stmt = stmt.where(
                exists().where(
                    series.c.study_uid == studies.c.study_uid,
                    series.c.modality == f.modality.upper(),
                )
            )
        stmt = _time_page(stmt, studies.c.last_received_at, studies.c.id, after).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
            return self._studies._build(conn, rows)

    def study_keys(self, study_uids: Iterable[str]) -> dict[str, TimeKey]:
        """The sort keys of studies (for the cursor of a page)."""
        uids = list(study_uids)
        stmt = select(studies.c.study_uid, studies.c.last_received_at, studies.c.id).where(
            studies.c.study_uid.in_(uids)
        )
        with self.engine.connect() as conn:
            return {r.study_uid: (r.last_received_at, r.id) for r in conn.execute(stmt).all()}

    def jobs(self, f: JobFilter, *, before_id: int | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first."""
        stmt = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if f.sites is not None:
            stmt = stmt.where(jobs.c.study_uid.in_(of_sites(f.sites)))
        if f.states:
            stmt = stmt.where(jobs.c.state.in_([JobState(s).value for s in f.states]))
            if f.study_uid is None and f.route is None:
                stmt = stmt.where(jobs.c.route != CANARY_ROUTE)
        if f.vendor is not None:
            stmt = stmt.where(jobs.c.vendor == f.vendor)
        if f.study_uid is not None:
            stmt = stmt.where(jobs.c.study_uid == f.study_uid)
        if f.route is not None:
            stmt = stmt.where(jobs.c.route == f.route)
        if f.since is not None:
            stmt = stmt.where(jobs.c.created_at >= f.since)
        if f.until is not None:
            stmt = stmt.where(jobs.c.created_at < f.until)
        if before_id is not None:
            stmt = stmt.where(jobs.c.id < before_id)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(stmt).all()]

    def results(
        self, f: ResultFilter, *, before_id: int | None = None, limit: int = 100
    ) -> list[Result]:
        """Results, newest first, with their objects and findings."""
        stmt = select(results).order_by(results.c.id.desc()).limit(limit)
        if f.sites is not None:
            stmt = stmt.where(results.c.study_uid.in_(of_sites(f.sites)))
        if f.study_uid is not None:
            stmt = stmt.where(results.c.study_uid == f.study_uid)
        if f.vendor is not None:
            stmt = stmt.where(results.c.vendor == f.vendor)
        if f.state is not None:
            stmt = stmt.where(results.c.state == ResultState(f.state).value)
        if f.orphan is True:
            stmt = stmt.where(results.c.job_id.is_(None))
        elif f.orphan is False:
            stmt = stmt.where(results.c.job_id.is_not(None))
        if before_id is not None:
            stmt = stmt.where(results.c.id < before_id)
        with self.engine.connect() as conn:
            return _build_results(conn, conn.execute(stmt).all())

    def deliveries(
        self, f: DeliveryFilter, *, before_id: int | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Write-back deliveries (and notifications), newest first."""
        stmt = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
        if f.sites is not None:
            sites_jobs = select(jobs.c.id).where(jobs.c.study_uid.in_(of_sites(f.sites)))
            stmt = stmt.where(deliveries.c.job_id.in_(sites_jobs))
        if f.states:
            stmt = stmt.where(deliveries.c.state.in_([DeliveryState(s).value for s in f.states]))
        if f.target is not None:
            stmt = stmt.where(deliveries.c.target == f.target)
        if f.result_id is not None:
            stmt = stmt.where(deliveries.c.result_id == f.result_id)
        if f.job_id is not None:
            stmt = stmt.where(deliveries.c.job_id == f.job_id)
        if before_id is not None:
            stmt = stmt.where(deliveries.c.id < before_id)
        with self.engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(stmt).all()]

    def orders(
        self,
        *,
        status: str | None = None,
        accession_number: str | None = None,
        patient_id: str | None = None,
        after: TimeKey | None = None,
        limit: int = 100,
        sites: frozenset[str] | None = None,
    ) -> list[StoredOrder]:
        """Orders by last update, newest first (only ``sites``' when given)."""
        stmt = select(orders)
        if sites is not None:
            stmt = stmt.where(orders.c.site.in_(sorted(sites)))
        if status is not None:
            stmt = stmt.where(orders.c.status == status)
        if accession_number is not None:
            stmt = stmt.where(orders.c.accession_number == accession_number)
        if patient_id is not None:
            stmt = stmt.where(orders.c.patient_id == patient_id)
        stmt = _time_page(stmt, orders.c.updated_at, orders.c.id, after).limit(limit)
        with self.engine.connect() as conn:
            return [_order(r) for r in conn.execute(stmt).all()]

    def order_ids(self, resource_ids: Iterable[int]) -> dict[int, TimeKey]:
        """Sort keys of orders by id."""
        stmt = select(orders.c.id, orders.c.updated_at).where(orders.c.id.in_(list(resource_ids)))
        with self.engine.connect() as conn:
            return {r.id: (r.updated_at, r.id) for r in conn.execute(stmt).all()}


@dataclass(frozen=True, slots=True)
class VendorActivity:
    """A vendor's jobs by state, and its sends and failures since a time."""

    by_state: dict[str, int]
    sent: int
    failed: int
    dead: int
    last_sent_at: datetime | None

    @property
    def error_rate(self) -> float | None:
        """Failed attempts over all attempts that ended (None: none ended)."""
        ended = self.sent + self.failed + self.dead
        return None if ended == 0 else (self.failed + self.dead) / ended


def vendor_activity(
    engine: Engine, vendors: Iterable[str], since: datetime
) -> dict[str, VendorActivity]:
    """Per vendor: jobs by state (canary jobs left out: :func:`job_counts`), and the outcomes
    of attempts since ``since`` (a canary's too: a vendor that fails them is failing) and the
    last successful send (index ``job_events (to_state, at)``)."""
    names = list(vendors)
    outcomes = (JobState.SENT.value, JobState.FAILED.value, JobState.DEAD.value)
    with engine.connect() as conn:
        by_state: dict[str, dict[str, int]] = {v: {} for v in names}
        for (vendor, state), count in job_counts(conn).items():
            by_state.setdefault(vendor, {})[state] = count
        ended = lane_outcomes(conn, JOBS, outcomes, since)
        result = {}
        for vendor in sorted(by_state):
            last = conn.execute(
                select(job_events.c.at)
                .select_from(job_events.join(jobs, jobs.c.id == job_events.c.job_id))
                .where(job_events.c.to_state == JobState.SENT.value, jobs.c.vendor == vendor)
                .order_by(job_events.c.at.desc())
                .limit(1)
            ).scalar_one_or_none()
            counts = ended.get(vendor, {})
            result[vendor] = VendorActivity(
                by_state=by_state[vendor],
                sent=counts.get(JobState.SENT.value, 0),
                failed=counts.get(JobState.FAILED.value, 0),
                dead=counts.get(JobState.DEAD.value, 0),
                last_sent_at=last,
            )
    return result
