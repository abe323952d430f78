"""Performance figures and the drift test as pure functions: PPV from verdicts, sensitivity
and specificity where final reports decide, nearest-rank percentiles, months in site time,
and the two-proportion z-test against a textbook value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from adapters.console.charts import histogram, lines
from broker.model.alerts import two_proportion_z_test
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
