"""The comparison a silent trial is run for: how a candidate product did, and how often it
agreed with the incumbent, per finding code. Pure: no I/O.

Agreement is measured on the studies both products analysed (each has a complete
result with findings): per finding code, a product that did not name the code in
its findings of a study counts as having found it absent. Percent agreement is the
share of such studies where both say the same; Cohen's kappa corrects it for the
agreement chance alone would give, ``(po - pe) / (1 - pe)`` (undefined, ``None``,
when chance agreement is total, e.g. both products always negative).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from broker.model.contract import ContractKind, ContractTerms, Period
from broker.model.domain import Code, Findings
from broker.model.jobs import JobState


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialJob:
    """One study a product was asked to read in the period, and what came of it."""

    job_id: int
    study_uid: str
    state: JobState
    sent_at: datetime | None
    answered_at: datetime | None
    findings: Findings | None
    quantity: int = 0
    """Billing units of its usage row (0 when it was never sent)."""
    price: Decimal = Decimal(0)
    currency: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeAgreement:
    """Agreement of two products on one finding code."""

    code: Code
    studies: int
    agree: int
    positive: int
    """Studies the product found it present in."""
    positive_against: int
    percent: float | None
    kappa: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialReport:
    vendor: str
    product: str
    against: str | None
    start: date
    end: date
    studies: int
    """Jobs of the period (studies routed to the product)."""
    sent: int
    results: int
    failed: int
    """Jobs that never reached the product (dead or cancelled before being sent)."""
    no_answer: int
    """Studies sent that have no complete result."""
    turnaround_p50: float | None
    turnaround_p95: float | None
    """Seconds from the study sent to its result complete."""
    positive: int
    """Results with at least one finding present."""
    cost: Decimal
    currency: str | None
    cost_basis: str
    agreement: tuple[CodeAgreement, ...] = field(default_factory=tuple)

    @property
    def failure_rate(self) -> float | None:
        return _ratio(self.failed, self.studies)

    @property
    def no_answer_rate(self) -> float | None:
        return _ratio(self.no_answer, self.sent)

    @property
    def positive_rate(self) -> float | None:
        return _ratio(self.positive, self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "vendor": self.vendor,
            "product": self.product,
            "against": self.against,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "studies": self.studies,
            "sent": self.sent,
            "results": self.results,
            "failed": self.failed,
            "no_answer": self.no_answer,
            "failure_rate": self.failure_rate,
            "no_answer_rate": self.no_answer_rate,
            "turnaround_p50_seconds": self.turnaround_p50,
            "turnaround_p95_seconds": self.turnaround_p95,
            "positive": self.positive,
            "positive_rate": self.positive_rate,
            "cost": str(self.cost),
            "currency": self.currency,
            "cost_basis": self.cost_basis,
            "agreement": [
                {
                    "code": a.code.value,
                    "system": a.code.system,
                    "meaning": a.code.meaning,
                    "studies": a.studies,
                    "agree": a.agree,
                    "positive": a.positive,
                    "positive_against": a.positive_against,
                    "percent_agreement": a.percent,
                    "kappa": a.kappa,
                }
                for a in self.agreement
            ],
        }


CSV_COLUMNS = (
    "vendor",
    "product",
    "against",
    "from",
    "to",
    "studies",
    "sent",
    "results",
    "failure_rate",
    "no_answer_rate",
    "turnaround_p50_seconds",
    "turnaround_p95_seconds",
    "positive_rate",
    "cost",
    "currency",
    "code",
    "system",
    "meaning",
    "compared",
    "percent_agreement",
    "kappa",
)


def report_csv(report: TrialReport) -> str:
    """One row per finding code compared (the summary repeated on each; one row without a
    code when nothing could be compared), with a header row."""
    data = report.as_json()
    summary = ["" if data[c] is None else data[c] for c in CSV_COLUMNS[:15]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    rows = [
        [a["code"], a["system"], a["meaning"], a["studies"], a["percent_agreement"], a["kappa"]]
        for a in data["agreement"]
    ] or [["", "", "", 0, None, None]]
    for row in rows:
        writer.writerow([*summary, *("" if v is None else v for v in row)])
    return buffer.getvalue()


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 3)


def agreement(pairs: Sequence[tuple[bool, bool]]) -> tuple[float | None, float | None]:
    """(percent agreement, Cohen's kappa) of paired present/absent calls."""
    n = len(pairs)
    if n == 0:
        return None, None
    po = sum(a == b for a, b in pairs) / n
    pa = sum(a for a, _ in pairs) / n
    pb = sum(b for _, b in pairs) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    kappa = None if math.isclose(pe, 1.0) else round((po - pe) / (1 - pe), 4)
    return round(po * 100, 2), kappa


def _present(findings: Findings) -> dict[tuple[str, str], tuple[Code, bool]]:
    out: dict[tuple[str, str], tuple[Code, bool]] = {}
    for f in findings.findings:
        key = (f.code.system, f.code.value)
        known = out.get(key)
        out[key] = (f.code, f.present or (known is not None and known[1]))
    return out


def compare(
    mine: Mapping[str, Findings], theirs: Mapping[str, Findings]
) -> tuple[CodeAgreement, ...]:
    """Per finding code, the agreement on the studies both products have findings of."""
    both = sorted(set(mine) & set(theirs))
    calls = [(_present(mine[uid]), _present(theirs[uid])) for uid in both]
    codes: dict[tuple[str, str], Code] = {}
    for a, b in calls:
        for key, (code, _) in (*a.items(), *b.items()):
            codes.setdefault(key, code)
    out = []
    for key in sorted(codes):
        pairs = [
            (a[key][1] if key in a else False, b[key][1] if key in b else False) for a, b in calls
        ]
        percent, kappa = agreement(pairs)
        out.append(
            CodeAgreement(
                code=codes[key],
                studies=len(pairs),
                agree=sum(x == y for x, y in pairs),
                positive=sum(x for x, _ in pairs),
                positive_against=sum(y for _, y in pairs),
                percent=percent,
                kappa=kappa,
            )
        )
    return tuple(out)


#: Job states that never reached the vendor.
NOT_SENT = frozenset({JobState.PENDING, JobState.SENDING, JobState.FAILED})


def contract_cost(
    terms: ContractTerms, sent: Sequence[TrialJob], start: date, end: date
) -> tuple[Decimal, str]:
    """What ``sent`` would have cost under ``terms``, and how that was reckoned: a trial's
    free uses cost nothing (those past its quota its price each), per use is the price per
    billing unit, a package its price for each of its periods the report's days touch."""
    basis = f"contract '{terms.name}' ({terms.kind.value})"
    units = sum(max(j.quantity, 1) for j in sent)
    if terms.kind is ContractKind.TRIAL:
        return terms.price * max(units - (terms.quota or units), 0), basis
    if terms.kind is ContractKind.PER_USE:
        return terms.price * units, basis
    if terms.period is Period.CONTRACT:
        periods = 1
    else:
        days = (start + timedelta(days=n) for n in range((end - start).days + 1))
        periods = len({terms.period.key(day) for day in days})
    return (terms.price * periods if sent else Decimal(0)), basis


def build_report(
    *,
    vendor: str,
    product: str,
    start: date,
    end: date,
    jobs: Sequence[TrialJob],
    against: str | None,
    theirs: Mapping[str, Findings],
    contract: ContractTerms | None = None,
) -> TrialReport:
    """The trial report of one product's ``jobs`` of the period, against another product's
    findings of the same studies (``theirs``, by study UID); its cost under ``contract``
    (the product's offered contract) or else at the price its usage rows carry."""
    sent = [j for j in jobs if j.sent_at is not None]
    answered = [j for j in sent if j.answered_at is not None]
    failed = [
        j for j in jobs if j.sent_at is None and j.state in (JobState.DEAD, JobState.CANCELLED)
    ]
    turnaround = [
        (j.answered_at - j.sent_at).total_seconds()
        for j in answered
        if j.answered_at is not None and j.sent_at is not None
    ]
    mine = {j.study_uid: j.findings for j in answered if j.findings is not None}
    currencies = {j.currency for j in sent if j.currency}
    cost, basis = sum((j.price * j.quantity for j in sent), Decimal(0)), "price"
    if contract is not None:
        cost, basis = contract_cost(contract, sent, start, end)
        currencies = {contract.currency} if contract.currency else currencies
    return TrialReport(
        vendor=vendor,
        product=product,
        against=against,
        start=start,
        end=end,
        studies=len(jobs),
        sent=len(sent),
        results=len(answered),
        failed=len(failed),
        no_answer=len(sent) - len(answered),
        turnaround_p50=percentile(turnaround, 50),
        turnaround_p95=percentile(turnaround, 95),
        positive=sum(1 for f in mine.values() if any(x.present for x in f.findings)),
        cost=cost,
        currency=currencies.pop() if len(currencies) == 1 else None,
        cost_basis=basis,
        agreement=compare(mine, theirs) if against is not None else (),
    )
