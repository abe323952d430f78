"""Counts and per-study summaries for the operations console's overview pages.

Each function is one or two indexed queries, so the dashboard and the studies
list cost the same with ten studies a day or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Engine, func, select

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


def jobs_by_state(engine: Engine, sites: frozenset[str] | None = None) -> dict[str, int]:
    """How many jobs are in each state (states with none are left out); only ``sites``'
    studies' jobs when given."""
    stmt = select(jobs.c.state, func.count()).group_by(jobs.c.state)
    if sites is not None:
        stmt = stmt.where(jobs.c.study_uid.in_(of_sites(sites)))
    with engine.connect() as conn:
        return {state: int(n) for state, n in conn.execute(stmt).all()}


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
