"""What a trial report reads: a product's jobs of a period with when each was sent, its
first complete result with findings, and its usage row; another product's findings of
the same studies. Four queries, whatever the number of studies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine, func, select

from broker.model.domain import Findings, ResultState
from broker.model.jobs import JobState
from broker.model.trials import TrialJob
from broker.store.results import findings_from_json
from broker.store.studies import of_sites
from broker.store.tables import job_events, jobs, results, usage


def trial_jobs(
    engine: Engine,
    vendor: str,
    since: datetime,
    until: datetime,
    sites: frozenset[str] | None = None,
) -> list[TrialJob]:
    """The vendor's jobs created in ``[since, until)``, oldest first (only ``sites``'
    studies' when given)."""
    stmt = (
        select(jobs.c.id, jobs.c.study_uid, jobs.c.state)
        .where(jobs.c.vendor == vendor, jobs.c.created_at >= since, jobs.c.created_at < until)
        .order_by(jobs.c.id)
    )
    if sites is not None:
        stmt = stmt.where(jobs.c.study_uid.in_(of_sites(sites)))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        ids = [r.id for r in rows]
        sent: dict[int, datetime] = {}
        answers: dict[int, tuple[datetime, Findings | None]] = {}
        charged: dict[int, tuple[int, Decimal, str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sent.update(
                (job_id, at)
                for job_id, at in conn.execute(
                    select(job_events.c.job_id, func.min(job_events.c.at))
                    .where(
                        job_events.c.job_id.in_(chunk),
                        job_events.c.to_state == JobState.SENT.value,
                    )
                    .group_by(job_events.c.job_id)
                ).all()
            )
            for r in conn.execute(
                select(results.c.job_id, results.c.completed_at, results.c.findings_json)
                .where(
                    results.c.job_id.in_(chunk),
                    results.c.state == ResultState.COMPLETE.value,
                )
                .order_by(results.c.id)
            ).all():
                if r.job_id not in answers or answers[r.job_id][1] is None:
                    found = findings_from_json(r.findings_json) if r.findings_json else None
                    answers[r.job_id] = (r.completed_at, found)
            charged.update(
                (r.job_id, (r.quantity, Decimal(r.price), r.currency))
                for r in conn.execute(
                    select(usage.c.job_id, usage.c.quantity, usage.c.price, usage.c.currency).where(
                        usage.c.job_id.in_(chunk)
                    )
                ).all()
            )
    out = []
    for r in rows:
        answer = answers.get(r.id)
        quantity, price, currency = charged.get(r.id, (0, Decimal(0), None))
        out.append(
            TrialJob(
                job_id=r.id,
                study_uid=r.study_uid,
                state=JobState(r.state),
                sent_at=sent.get(r.id),
                answered_at=answer[0] if answer else None,
                findings=answer[1] if answer else None,
                quantity=quantity,
                price=price,
                currency=currency,
            )
        )
    return out


def findings_of(engine: Engine, vendor: str, study_uids: Sequence[str]) -> dict[str, Findings]:
    """The vendor's latest complete findings of each of ``study_uids`` that it has any of."""
    out: dict[str, Findings] = {}
    with engine.connect() as conn:
        for start in range(0, len(study_uids), 500):
            chunk = list(study_uids[start : start + 500])
            for r in conn.execute(
                select(jobs.c.study_uid, results.c.findings_json)
                .join(results, results.c.job_id == jobs.c.id)
                .where(
                    jobs.c.vendor == vendor,
                    jobs.c.study_uid.in_(chunk),
                    results.c.state == ResultState.COMPLETE.value,
                    results.c.findings_json.is_not(None),
                )
                .order_by(results.c.id)
            ).all():
                out[r.study_uid] = findings_from_json(r.findings_json)
    return out


def studies_in_common(engine: Engine, vendor: str, study_uids: Sequence[str]) -> dict[str, int]:
    """Other vendors with jobs on ``study_uids``: how many of those studies each has."""
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for start in range(0, len(study_uids), 500):
            chunk = list(study_uids[start : start + 500])
            for name, n in conn.execute(
                select(jobs.c.vendor, func.count())
                .where(jobs.c.study_uid.in_(chunk), jobs.c.vendor != vendor)
                .group_by(jobs.c.vendor)
            ).all():
                counts[name] = counts.get(name, 0) + int(n)
    return counts
