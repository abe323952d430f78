"""Counts and per-study summaries for the operations console's overview pages.

Each function is one or two indexed queries, so the dashboard and the studies
list cost the same with ten studies a day or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, func, select, union_all

from broker.model.canary import CANARY_ROUTE
from broker.model.jobs import Job
from broker.store.jobs import _job
from broker.store.studies import of_sites
from broker.store.tables import jobs, results, studies


def count_studies(
    engine: Engine, since: datetime, until: datetime, sites: frozenset[str] | None = None
) -> int:
    """Studies last received in ``[since, until)`` (index ``studies (last_received_at)``),
    only ``sites``' when given."""
    stmt = select(func.count()).where(
        studies.c.last_received_at >= since, studies.c.last_received_at < until
    )
    if sites is not None:
        stmt = stmt.where(studies.c.site.in_(sorted(sites)))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def job_counts(conn: Connection, sites: frozenset[str] | None = None) -> dict[tuple[str, str], int]:
    """How many jobs each vendor has in each state (none: left out), only ``sites``' studies'
    when given. Canary jobs (route :data:`~broker.model.canary.CANARY_ROUTE`) are left out:
    a canary's outcome is its run's, not work for an operator (a dead canary is no dead job).

    One statement (one snapshot), each part index-only: every job by vendor and state
    (index ``jobs (vendor, state)``), less the canary jobs (``jobs (route, vendor, state)``).
    """

    def by_vendor_state(sign: int, *where: ColumnElement[bool]) -> Select[Any]:
        stmt = select(jobs.c.vendor, jobs.c.state, (func.count() * sign).label("n")).where(*where)
        if sites is not None:
            stmt = stmt.where(jobs.c.study_uid.in_(of_sites(sites)))
        return stmt.group_by(jobs.c.vendor, jobs.c.state)

    both = union_all(by_vendor_state(1), by_vendor_state(-1, jobs.c.route == CANARY_ROUTE))
    found: dict[tuple[str, str], int] = {}
    for vendor, state, n in conn.execute(both).all():
        found[(vendor, state)] = found.get((vendor, state), 0) + int(n)
    return {key: n for key, n in found.items() if n}


def jobs_by_state(engine: Engine, sites: frozenset[str] | None = None) -> dict[str, int]:
    """How many jobs are in each state (none: left out), canary jobs left out
    (:func:`job_counts`); only ``sites``' studies' jobs when given."""
    found: dict[str, int] = {}
    with engine.connect() as conn:
        for (_vendor, state), n in job_counts(conn, sites).items():
            found[state] = found.get(state, 0) + n
    return found


def jobs_of_studies(engine: Engine, study_uids: Iterable[str]) -> dict[str, list[Job]]:
    """Each study's jobs, by vendor name."""
    uids = list(study_uids)
    found: dict[str, list[Job]] = {uid: [] for uid in uids}
    if not uids:
        return found
    stmt = select(jobs).where(jobs.c.study_uid.in_(uids)).order_by(jobs.c.vendor, jobs.c.id)
    with engine.connect() as conn:
        for row in conn.execute(stmt).all():
            found[row.study_uid].append(_job(row))
    return found


def results_of_studies(engine: Engine, study_uids: Iterable[str]) -> dict[str, int]:
    """How many results came back for each study (orphans included)."""
    uids = list(study_uids)
    if not uids:
        return {}
    stmt = (
        select(results.c.study_uid, func.count())
        .where(results.c.study_uid.in_(uids))
        .group_by(results.c.study_uid)
    )
    with engine.connect() as conn:
        return {uid: int(n) for uid, n in conn.execute(stmt).all()}
