"""What the vendor watch reads: per finding code in a period, how many findings were present
and their probabilities (scores); how many of the jobs sent in a window have a result; and
the product version a vendor reported before. Canary jobs count in none of them but their
own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, exists, func, select

from broker.model.canary import CANARY_ROUTE
from broker.model.domain import ResultState
from broker.model.jobs import JobState
from broker.model.verdicts import code_key
from broker.store.results import findings_from_json
from broker.store.tables import job_events, jobs, results


@dataclass(frozen=True, slots=True)
class Answered:
    sent: int
    answered: int


@dataclass(slots=True)
class CodeTally:
    """One finding code's findings in a period: how many, how many present, their scores."""

    positives: int = 0
    count: int = 0
    scores: list[float] = field(default_factory=list)


def code_tallies(
    engine: Engine, vendor: str, start: datetime, end: datetime
) -> dict[str, CodeTally]:
    """Per finding code: the findings of the vendor's results completed in the period."""
    r, j = results, jobs
    with engine.connect() as conn:
        rows = conn.execute(
            select(r.c.findings_json)
            .select_from(r.join(j, j.c.id == r.c.job_id))
            .where(
                r.c.vendor == vendor,
                r.c.state == ResultState.COMPLETE.value,
                r.c.completed_at >= start,
                r.c.completed_at < end,
                r.c.findings_json.is_not(None),
                j.c.route != CANARY_ROUTE,
            )
        ).scalars()
        tallies: dict[str, CodeTally] = {}
        for text in rows:
            for f in findings_from_json(text).findings:
                tally = tallies.setdefault(code_key(f.code), CodeTally())
                tally.positives += int(f.present)
                tally.count += 1
                if f.score is not None:
                    tally.scores.append(f.score)
    return tallies


def answered(
    engine: Engine, vendor: str, start: datetime, end: datetime, *, canaries: bool = False
) -> Answered:
    """Of the vendor's jobs first sent in the period, how many have a complete result."""
    j, e, r = jobs, job_events, results
    first_sent = (
        select(e.c.job_id, func.min(e.c.at).label("at"))
        .where(e.c.to_state == JobState.SENT.value)
        .group_by(e.c.job_id)
        .subquery()
    )
    has_result = exists().where(and_(r.c.job_id == j.c.id, r.c.state == ResultState.COMPLETE.value))
    route = j.c.route == CANARY_ROUTE if canaries else j.c.route != CANARY_ROUTE
    with engine.connect() as conn:
        sent, done = conn.execute(
            select(func.count(), func.count().filter(has_result))
            .select_from(j.join(first_sent, first_sent.c.job_id == j.c.id))
            .where(j.c.vendor == vendor, route, first_sent.c.at >= start, first_sent.c.at < end)
        ).one()
    return Answered(int(sent), int(done))


def versions_around(engine: Engine, result_id: int) -> tuple[str | None, str | None, str | None]:
    """(vendor, the result's product version, the version of the vendor's complete result
    before it) — from JSON findings, or those read from the vendor's SR. A canary's result
    is none of them (all None)."""
    r, j = results, jobs
    clinical = r.join(j, j.c.id == r.c.job_id)
    with engine.connect() as conn:
        row = conn.execute(
            select(r.c.vendor, r.c.findings_json)
            .select_from(clinical)
            .where(r.c.id == result_id, j.c.route != CANARY_ROUTE)
        ).first()
        if row is None or row.vendor is None or row.findings_json is None:
            return None, None, None
        before = conn.execute(
            select(r.c.findings_json)
            .select_from(clinical)
            .where(
                j.c.route != CANARY_ROUTE,
                r.c.vendor == row.vendor,
                r.c.id < result_id,
                r.c.state == ResultState.COMPLETE.value,
                r.c.findings_json.is_not(None),
            )
            .order_by(r.c.id.desc())
            .limit(1)
        ).scalar()
    version = findings_from_json(row.findings_json).algorithm.version
    previous = findings_from_json(before).algorithm.version if before else None
    return row.vendor, version, previous
