"""Reconciling several products' findings of one study, and the trials comparison: pure
functions (owners, disagreements, shadow products, agreement, kappa, percentiles)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from broker.model.contract import ContractKind, ContractTerms, Period
from broker.model.domain import AlgorithmInfo, Code, Finding, Findings
from broker.model.jobs import JobState
from broker.model.reconciliation import (
    Provenance,
    Read,
    ReconcilePolicy,
    disagreement,
    provenance_text,
    reconcile,
)
from broker.model.trials import (
    TrialJob,
    agreement,
    build_report,
    contract_cost,
    percentile,
    report_csv,
)

NODULE = Code("RADLEX", "RID50149", "Pulmonary nodule")
FRACTURE = Code("SCT", "125605004", "Fracture of bone")
STUDY = "1.2.3"


def _read(vendor: str, result_id: int, *found: Finding, shadow: bool = False) -> Read:
    return Read(
        Findings(
            study_uid=STUDY, algorithm=AlgorithmInfo(vendor, f"{vendor} AI", "1"), findings=found
        ),
        Provenance(
            vendor=vendor,
            product=f"{vendor} product",
            version="1",
            maker=vendor,
            result_id=result_id,
            job_id=result_id,
            route="chest",
            shadow=shadow,
        ),
    )


def _f(code: Code, present: bool, score: float | None = None) -> Finding:
    return Finding(code=code, present=present, score=score)


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        (_f(NODULE, True), _f(NODULE, False), "present vs absent"),
        (_f(NODULE, True, 0.9), _f(NODULE, True, 0.3), "probabilities 0.3 and 0.9 across"),
        (_f(NODULE, True, 0.9), _f(NODULE, True, 0.6), None),
        (_f(NODULE, True, 0.9), _f(NODULE, True), None),
    ],
)
def test_two_findings_disagree_on_presence_or_across_the_threshold(
    a: Finding, b: Finding, why: str | None
) -> None:
    """Present against absent disagrees; so do probabilities on both sides of the threshold;
    two probabilities on the same side, or one missing, agree."""
    found = disagreement(a, b, 0.5)
    assert (found is None) == (why is None)
    assert why is None or (found is not None and found.startswith(why))


def test_owners_first_non_owners_marked_shadow_last_and_never_flagged() -> None:
    """The route's owner of a code comes first, another product's finding of it is marked
    not the owner; a code nobody owns sits between; a shadow product's contrary finding is
    listed last and raises no flag; nothing is dropped."""
    policy = {"chest": ReconcilePolicy(owners={"RADLEX:RID50149": "bone", "125605004": "bone"})}
    view = reconcile(
        STUDY,
        [
            _read("lung", 1, _f(NODULE, True, 0.8), _f(Code("SCT", "1", "Other"), True)),
            _read("bone", 2, _f(NODULE, True, 0.7), _f(FRACTURE, True)),
            _read("trial", 3, _f(NODULE, False, 0.1), shadow=True),
        ],
        policy,
    )
    assert [(f.provenance.vendor, f.finding.code.value, f.owner) for f in view.findings] == [
        ("bone", "RID50149", True),
        ("bone", "125605004", True),
        ("lung", "1", None),
        ("lung", "RID50149", False),
        ("trial", "RID50149", False),
    ]
    assert not view.discordant and view.flags == ()
    assert len(view.live()) == 4 and [p.vendor for p in view.provenances()] == ["bone", "lung"]
    assert provenance_text(view.findings[3]).endswith("not the owner of this finding")


def test_a_disagreement_flags_the_study_and_both_findings() -> None:
    """Two live products disagreeing on one code: one discordance naming both results, the
    study flagged ``discordant``, both findings marked; the other code stays unflagged."""
    view = reconcile(
        STUDY,
        [
            _read("lung", 1, _f(NODULE, True, 0.9), _f(FRACTURE, False)),
            _read("chest", 2, _f(NODULE, True, 0.2)),
        ],
        {"chest": ReconcilePolicy(threshold=0.5)},
    )
    [d] = view.discordances
    assert d.result_ids == (1, 2) and d.vendors == ("lung", "chest") and d.code == NODULE
    assert [f.value for f in view.flags] == ["discordant"]
    assert view.involving(2) == (d,) and view.involving(3) == ()
    assert {(f.provenance.vendor, f.finding.code.value, f.discordant) for f in view.findings} == {
        ("chest", "RID50149", True),
        ("lung", "RID50149", True),
        ("lung", "125605004", False),
    }


def test_agreement_and_kappa_by_hand() -> None:
    """Percent agreement and Cohen's kappa against a hand count: 10 studies, both positive
    in 4, both negative in 4, one each way: po 0.8, pe 0.5, kappa 0.6; total chance
    agreement (always both negative) has no kappa."""
    pairs = [(True, True)] * 4 + [(False, False)] * 4 + [(True, False), (False, True)]
    assert agreement(pairs) == (80.0, 0.6)
    assert agreement([(False, False)] * 3) == (100.0, None)
    assert agreement([]) == (None, None)
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == 4.8
    assert percentile([], 50) is None


def test_a_trial_report_counts_outcomes_and_compares_per_code() -> None:
    """Jobs of the period: one never sent (dead), one sent without answer, two answered;
    the agreement counts a code the other product did not name as absent."""
    t0 = datetime(2024, 5, 1, 8, tzinfo=UTC)

    def job(n: int, state: JobState, sent: bool, answer: float | None, *found: Finding) -> TrialJob:
        return TrialJob(
            job_id=n,
            study_uid=f"1.{n}",
            state=state,
            sent_at=t0 if sent else None,
            answered_at=t0 + timedelta(seconds=answer) if answer is not None else None,
            findings=Findings(
                study_uid=f"1.{n}", algorithm=AlgorithmInfo("v", "p", "1"), findings=found
            )
            if answer is not None
            else None,
            quantity=1 if sent else 0,
            price=Decimal(25),
            currency="CNY",
        )

    jobs = [
        job(1, JobState.DEAD, False, None),
        job(2, JobState.AWAITING_RESULT, True, None),
        job(3, JobState.DONE, True, 10, _f(NODULE, True)),
        job(4, JobState.DONE, True, 30),
    ]
    theirs = {
        "1.3": Findings(study_uid="1.3", algorithm=AlgorithmInfo("w", "q", "2")),
        "1.4": Findings(study_uid="1.4", algorithm=AlgorithmInfo("w", "q", "2")),
    }
    report = build_report(
        vendor="trial",
        product="Trial AI",
        start=date(2024, 5, 1),
        end=date(2024, 5, 31),
        jobs=jobs,
        against="incumbent",
        theirs=theirs,
    )
    assert (report.studies, report.sent, report.results, report.failed, report.no_answer) == (
        4,
        3,
        2,
        1,
        1,
    )
    assert (report.failure_rate, report.no_answer_rate, report.positive_rate) == (
        0.25,
        0.3333,
        0.5,
    )
    assert (report.turnaround_p50, report.turnaround_p95) == (20.0, 29.0)
    assert (report.cost, report.currency) == (Decimal(75), "CNY")
    [nodule] = report.agreement
    assert (nodule.studies, nodule.agree, nodule.percent, nodule.kappa) == (2, 1, 50.0, 0.0)
    header, row = report_csv(report).splitlines()
    assert header.split(",")[-6:] == [
        "code",
        "system",
        "meaning",
        "compared",
        "percent_agreement",
        "kappa",
    ]
    assert row.startswith("trial,Trial AI,incumbent,2024-05-01,2024-05-31,4,3,2,")
    assert row.endswith("RID50149,RADLEX,Pulmonary nodule,2,50.0,0.0")


def test_cost_under_the_offered_contract() -> None:
    """A trial's free uses cost nothing and the uses past its quota its price; per use is the
    price per unit; a monthly package its price once for each month the report touches."""
    t0 = datetime(2024, 5, 1, 8, tzinfo=UTC)
    sent = [
        TrialJob(
            job_id=n,
            study_uid=f"1.{n}",
            state=JobState.DONE,
            sent_at=t0,
            answered_at=None,
            findings=None,
            quantity=1,
        )
        for n in range(5)
    ]
    may, june = date(2024, 5, 1), date(2024, 6, 30)
    trial = ContractTerms(name="t", vendor="v", kind=ContractKind.TRIAL, quota=3, price=Decimal(9))
    per_use = ContractTerms(name="u", vendor="v", kind=ContractKind.PER_USE, price=Decimal(30))
    package = ContractTerms(
        name="p",
        vendor="v",
        kind=ContractKind.PACKAGE,
        quota=100,
        period=Period.MONTH,
        price=Decimal(1000),
    )
    assert contract_cost(trial, sent, may, june) == (Decimal(18), "contract 't' (trial)")
    assert contract_cost(per_use, sent, may, june)[0] == Decimal(150)
    assert contract_cost(package, sent, may, june)[0] == Decimal(2000)
    assert contract_cost(package, sent, may, may)[0] == Decimal(1000)
