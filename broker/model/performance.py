"""How an AI product performed over a period, month by month: pure arithmetic over the
records of its jobs, results, verdicts and final-report comparisons (no I/O).

- **studies**: jobs of the vendor created in the period (one per study); **results**: of
  them, those with a complete result; **failure rate**: jobs that failed or died at least
  once over jobs sent; **no-answer rate**: jobs sent that have no result (yet).
- **turnaround**: job sent → result complete, p50 and p95 (nearest rank).
- **positive rate** per finding code: findings present over findings of the code.
- **verdicts**: the newest verdict of each finding; **PPV** = (accepted + modified) over
  (accepted + modified + rejected), of findings the product called present.
- **final reports**: ``confirmed``, ``contradicted``, ``not_mentioned``; where the report
  decides, **sensitivity** = TP / (TP + FN) and **specificity** = TN / (TN + FP), with TP a
  present finding the report confirms, FN an absent one it contradicts, TN an absent one
  it confirms and FP a present one it contradicts.
- **versions**: results by the product's reported software version.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo


@dataclass(frozen=True, slots=True, kw_only=True)
class FindingRecord:
    code: str
    present: bool
    verdict: str | None = None
    """The newest verdict (``accepted``, ``rejected``, ``modified``) or None."""
    report: str | None = None
    """The comparison with the final report (``confirmed``…) or None."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One job of the vendor with what became of it."""

    job_id: int
    created_at: datetime
    sent_at: datetime | None
    failed: bool
    """It failed or died at least once."""
    result_at: datetime | None
    """When its (first complete) result completed."""
    version: str | None = None
    findings: tuple[FindingRecord, ...] = ()


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` 0.5 for the median); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True, slots=True)
class CodeRate:
    findings: int
    positives: int

    @property
    def rate(self) -> float | None:
        return _rate(self.positives, self.findings)


@dataclass(frozen=True, slots=True)
class Stats:
    """The figures of one period (a month, or the whole)."""

    studies: int
    results: int
    sent: int
    failed: int
    no_answer: int
    turnaround_p50: float | None
    turnaround_p95: float | None
    positive: dict[str, CodeRate]
    verdicts: dict[str, int]
    """Every finding's newest verdict, by verdict."""
    judged_positives: dict[str, int]
    """The same, of findings the product called present (the PPV's)."""
    reports: dict[str, int]
    tp: int
    fp: int
    tn: int
    fn: int
    versions: dict[str, int] = field(default_factory=dict)
    turnarounds: tuple[float, ...] = ()

    @property
    def failure_rate(self) -> float | None:
        return _rate(self.failed, self.sent)

    @property
    def no_answer_rate(self) -> float | None:
        return _rate(self.no_answer, self.sent)

    @property
    def ppv(self) -> float | None:
        judged = self.judged_positives
        good = judged.get("accepted", 0) + judged.get("modified", 0)
        return _rate(good, good + judged.get("rejected", 0))

    @property
    def sensitivity(self) -> float | None:
        return _rate(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float | None:
        return _rate(self.tn, self.tn + self.fp)


def stats(jobs: Iterable[JobRecord]) -> Stats:
    """The figures of these jobs."""
    items = list(jobs)
    turnarounds = [
        (j.result_at - j.sent_at).total_seconds()
        for j in items
        if j.sent_at is not None and j.result_at is not None
    ]
    positive: dict[str, list[int]] = {}
    verdicts: Counter[str] = Counter()
    judged: Counter[str] = Counter()
    reports: Counter[str] = Counter()
    confusion: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    for job in items:
        if job.result_at is not None:
            versions[job.version or "(unknown)"] += 1
        for f in job.findings:
            counts = positive.setdefault(f.code, [0, 0])
            counts[0] += 1
            counts[1] += int(f.present)
            if f.verdict is not None:
                verdicts[f.verdict] += 1
                if f.present:
                    judged[f.verdict] += 1
            if f.report is not None:
                reports[f.report] += 1
                if f.report in ("confirmed", "contradicted"):
                    right = f.report == "confirmed"
                    key = ("tp" if right else "fp") if f.present else ("tn" if right else "fn")
                    confusion[key] += 1
    sent = [j for j in items if j.sent_at is not None]
    return Stats(
        studies=len(items),
        results=sum(1 for j in items if j.result_at is not None),
        sent=len(sent),
        failed=sum(1 for j in sent if j.failed),
        no_answer=sum(1 for j in sent if j.result_at is None),
        turnaround_p50=percentile(turnarounds, 0.5),
        turnaround_p95=percentile(turnarounds, 0.95),
        positive={c: CodeRate(*counts) for c, counts in sorted(positive.items())},
        verdicts=dict(verdicts),
        judged_positives=dict(judged),
        reports=dict(reports),
        tp=confusion["tp"],
        fp=confusion["fp"],
        tn=confusion["tn"],
        fn=confusion["fn"],
        versions=dict(versions),
        turnarounds=tuple(sorted(turnarounds)),
    )


def month_of(at: datetime, tz: tzinfo) -> str:
    """``2024-05``: the month of ``at`` in the site's timezone."""
    return at.astimezone(tz).strftime("%Y-%m")


def by_month(jobs: Iterable[JobRecord], tz: tzinfo) -> dict[str, Stats]:
    """The figures of each month (by the job's creation, site time), oldest first."""
    months: dict[str, list[JobRecord]] = {}
    for job in jobs:
        months.setdefault(month_of(job.created_at, tz), []).append(job)
    return {m: stats(found) for m, found in sorted(months.items())}


#: The columns of the CSV export, after ``month``; the positive rate of each code follows.
CSV_COLUMNS = (
    "studies",
    "results",
    "failure_rate",
    "no_answer_rate",
    "turnaround_p50_s",
    "turnaround_p95_s",
    "accepted",
    "rejected",
    "modified",
    "ppv",
    "confirmed",
    "contradicted",
    "not_mentioned",
    "sensitivity",
    "specificity",
)


def csv_row(s: Stats) -> list[object]:
    """One month's figures in :data:`CSV_COLUMNS` order (empty where undefined)."""
    values: list[object] = [
        s.studies,
        s.results,
        s.failure_rate,
        s.no_answer_rate,
        s.turnaround_p50,
        s.turnaround_p95,
        s.verdicts.get("accepted", 0),
        s.verdicts.get("rejected", 0),
        s.verdicts.get("modified", 0),
        s.ppv,
        s.reports.get("confirmed", 0),
        s.reports.get("contradicted", 0),
        s.reports.get("not_mentioned", 0),
        s.sensitivity,
        s.specificity,
    ]
    return ["" if v is None else v for v in values]


def performance_csv(months: dict[str, Stats], total: Stats) -> str:
    """A row per month and one ``total``: :data:`CSV_COLUMNS`, then ``positive_rate CODE``
    per finding code."""
    codes = sorted(total.positive)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["month", *CSV_COLUMNS, *(f"positive_rate {c}" for c in codes)])
    for month, s in [*months.items(), ("total", total)]:
        rates = [r.rate if (r := s.positive.get(c)) is not None else None for c in codes]
        writer.writerow([month, *csv_row(s), *("" if v is None else v for v in rates)])
    return buffer.getvalue()
