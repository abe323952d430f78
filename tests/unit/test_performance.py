"""Performance figures and the drift test as pure functions: PPV from verdicts, sensitivity
and specificity where final reports decide, nearest-rank percentiles, months in site time,
and the two-proportion z-test against a textbook value."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from adapters.console.charts import histogram, lines
from broker.model.alerts import kolmogorov_q, ks_two_sample, two_proportion_z_test
from broker.model.performance import FindingRecord, JobRecord, by_month, percentile, stats

T0 = datetime(2024, 4, 30, 17, 0, tzinfo=UTC)  # 01:00 on 1 May in Shanghai
ICH = "SCT:1386000"


def _job(
    n: int, *findings: FindingRecord, answered: bool = True, failed: bool = False
) -> JobRecord:
    sent = T0 + timedelta(minutes=n)
    return JobRecord(
        job_id=n,
        created_at=T0,
        sent_at=sent,
        failed=failed,
        result_at=sent + timedelta(seconds=10 * n) if answered else None,
        version="2.0",
        findings=findings,
    )


def test_figures_from_verdicts_reports_and_timing() -> None:
    """PPV counts only findings called present; TP/FP/TN/FN only where the report decides;
    a job without result is a no-answer; turnarounds give p50 and p95."""
    jobs = [
        _job(1, FindingRecord(code=ICH, present=True, verdict="accepted", report="confirmed")),
        _job(2, FindingRecord(code=ICH, present=True, verdict="rejected", report="contradicted")),
        _job(3, FindingRecord(code=ICH, present=False, verdict="accepted", report="confirmed")),
        _job(4, FindingRecord(code=ICH, present=False, report="contradicted"), failed=True),
        _job(5, FindingRecord(code=ICH, present=True, verdict="modified", report="not_mentioned")),
        _job(6, answered=False),
    ]
    s = stats(jobs)
    assert (s.studies, s.results, s.no_answer_rate, s.failure_rate) == (6, 5, 0.1667, 0.1667)
    assert s.ppv == 0.6667  # accepted + modified of 3 present findings judged
    assert s.verdicts == {"accepted": 2, "rejected": 1, "modified": 1}
    assert (s.tp, s.fp, s.tn, s.fn) == (1, 1, 1, 1)
    assert (s.sensitivity, s.specificity) == (0.5, 0.5)
    assert s.positive[ICH].rate == 0.6  # 3 of 5
    assert (s.turnaround_p50, s.turnaround_p95) == (30.0, 50.0)
    assert s.versions == {"2.0": 5}
    assert percentile([], 0.5) is None and percentile([4.0], 0.95) == 4.0


def test_months_are_the_sites() -> None:
    """A job at 17:00 UTC on 30 April is May's in Shanghai, April's in UTC."""
    assert list(by_month([_job(1)], ZoneInfo("Asia/Shanghai"))) == ["2024-05"]
    assert list(by_month([_job(1)], ZoneInfo("UTC"))) == ["2024-04"]


def test_two_proportion_z_test_against_a_worked_example() -> None:
    """45/100 against 30/100: pooled 0.375, z = 2.191, two-sided p = 0.0285; no variance
    or no count gives None."""
    found = two_proportion_z_test(30, 100, 45, 100)
    assert found is not None
    assert (round(found.z, 3), round(found.p_value, 4)) == (2.191, 0.0285)
    assert two_proportion_z_test(0, 50, 0, 50) is None
    assert two_proportion_z_test(3, 0, 1, 10) is None


def test_kolmogorov_q_meets_the_tables_critical_values() -> None:
    """Q(1.358) = 0.05 and Q(1.628) = 0.01, the asymptotic critical values every table of the
    Kolmogorov distribution gives; Q is 1 at 0 and falls with λ."""
    assert abs(kolmogorov_q(1.358) - 0.05) < 0.0005
    assert abs(kolmogorov_q(1.628) - 0.01) < 0.0002
    assert kolmogorov_q(0.0) == 1.0
    assert kolmogorov_q(0.5) > kolmogorov_q(1.0) > kolmogorov_q(2.0) > 0


def test_ks_statistic_is_the_largest_gap_between_the_two_step_functions() -> None:
    """0.1..0.4 against 0.25..0.55: the functions are 0.5 apart from 0.2 to 0.45; equal
    samples (ties) are 0 apart with p = 1; an empty sample gives None."""
    found = ks_two_sample([0.1, 0.2, 0.3, 0.4], [0.25, 0.35, 0.45, 0.55])
    assert found is not None and found.d == 0.5
    same = ks_two_sample([0.2, 0.2, 0.7], [0.7, 0.2, 0.2])
    assert same is not None and (same.d, same.p_value) == (0.0, 1.0)
    assert ks_two_sample([], [0.5]) is None


def test_ks_test_tells_a_shifted_distribution_from_the_same_one() -> None:
    """200 probabilities drawn uniform against 200 drawn from Beta(2, 1) (skewed to 1): p far
    below 0.01; against another 200 uniform draws: p well above 0.05 (seeded draws)."""
    draw = random.Random(16)
    baseline = [draw.random() for _ in range(200)]
    shifted = [draw.betavariate(2, 1) for _ in range(200)]
    same = [draw.random() for _ in range(200)]
    moved, steady = ks_two_sample(baseline, shifted), ks_two_sample(baseline, same)
    assert moved is not None and steady is not None
    assert moved.p_value < 0.001 and moved.d > 0.15
    assert steady.p_value > 0.05 and steady.d < moved.d


def test_charts_place_bars_and_lines_inside_the_plot() -> None:
    """Every bar and point lies inside the drawing; a month with an alert gets a ring."""
    bars = histogram([1.0, 2.0, 2.5, 9.0], bins=4)
    assert sum(b.count for b in bars.bars) == 4 and max(b.height for b in bars.bars) > 0
    chart = lines(
        ["2024-04", "2024-05"], {"a": {"2024-04": 0.1, "2024-05": 0.4}}, {"a": {"2024-05": "drift"}}
    )
    [series] = chart.series
    assert all(0 <= x <= chart.width and 0 <= y <= chart.height for x, y, _ in series.dots)
    assert [m[2] for m in series.marks] == ["drift"] and series.dots[1][1] < series.dots[0][1]
    assert histogram([]).empty and lines([], {}).empty
