"""The records of a vendor's jobs in a period, for :mod:`broker.model.performance`: when each
was sent, whether it failed, when its result completed, the product version it reported,
and its findings with their newest verdicts and final-report comparisons.

Canary jobs (route :data:`CANARY_ROUTE`) are never counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from broker.model.canary import CANARY_ROUTE
from broker.model.domain import ResultState
from broker.model.jobs import JobState
from broker.model.performance import FindingRecord, JobRecord
from broker.model.verdicts import code_key
from broker.store.reports import ReportStore
from broker.store.results import findings_from_json
from broker.store.tables import job_events, jobs, results
from broker.store.verdicts import VerdictStore

_CHUNK = 500


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start : start + _CHUNK])


def job_records(engine: Engine, vendor: str, start: datetime, end: datetime) -> list[JobRecord]:
    """The vendor's jobs created in ``[start, end)``, oldest first, with what became of them."""
    j, e, r = jobs, job_events, results
    with engine.connect() as conn:
        rows = conn.execute(
            select(j.c.id, j.c.created_at)
            .where(
                j.c.vendor == vendor,
                j.c.created_at >= start,
                j.c.created_at < end,
                j.c.route != CANARY_ROUTE,
            )
            .order_by(j.c.id)
        ).all()
        ids = [row.id for row in rows]
        sent: dict[int, datetime] = {}
        failed: set[int] = set()
        found: dict[int, Any] = {}
        for chunk in _chunks(ids):
            sent |= dict(
                conn.execute(
                    select(e.c.job_id, func.min(e.c.at))
                    .where(e.c.job_id.in_(chunk), e.c.to_state == JobState.SENT.value)
                    .group_by(e.c.job_id)
                ).all()
            )
            failed |= set(
                conn.execute(
                    select(e.c.job_id)
                    .where(
                        e.c.job_id.in_(chunk),
                        e.c.to_state.in_((JobState.FAILED.value, JobState.DEAD.value)),
                    )
                    .distinct()
                ).scalars()
            )
            for done in conn.execute(
                select(r.c.id, r.c.job_id, r.c.completed_at, r.c.findings_json)
                .where(r.c.job_id.in_(chunk), r.c.state == ResultState.COMPLETE.value)
                .order_by(r.c.id)
            ).all():
                found[done.job_id] = done  # the newest complete result of a job counts
    result_ids = [res.id for res in found.values()]
    verdicts = VerdictStore(engine).current(result_ids)
    matches = ReportStore(engine).current(result_ids)
    records = []
    for job in rows:
        res = found.get(job.id)
        version: str | None = None
        findings: tuple[FindingRecord, ...] = ()
        if res is not None and res.findings_json:
            parsed = findings_from_json(res.findings_json)
            version = parsed.algorithm.version
            findings = tuple(
                FindingRecord(
                    code=code_key(f.code),
                    present=f.present,
                    verdict=v.verdict.value if (v := verdicts.get((res.id, n))) else None,
                    report=m.outcome.value if (m := matches.get((res.id, n))) else None,
                )
                for n, f in enumerate(parsed.findings)
            )
        records.append(
            JobRecord(
                job_id=job.id,
                created_at=job.created_at,
                sent_at=sent.get(job.id),
                failed=job.id in failed,
                result_at=res.completed_at if res is not None else None,
                version=version,
                findings=findings,
            )
        )
    return records
