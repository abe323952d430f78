"""What the vendor watch raises about an AI product, and the drift test. Pure: no I/O.

- ``drift``: the positive rate of a finding code in the recent window differs from the
  baseline's by a **two-proportion z-test** (pooled standard error) with a two-sided
  p-value below ``monitoring.drift.alpha``;
- ``version_changed``: the product reports another software version than before;
- ``results_missing``: the vendor took studies but returned results for fewer than a
  configured share of them in a window;
- ``canary_failed``: a synthetic study sent through the whole loop got no result within
  its deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from broker.model.domain import CodedValue


class AlertKind(CodedValue):
    DRIFT = "drift"
    VERSION_CHANGED = "version_changed"
    RESULTS_MISSING = "results_missing"
    CANARY_FAILED = "canary_failed"


@dataclass(frozen=True, slots=True)
class ZTest:
    """A two-proportion z-test of ``recent`` against ``baseline`` (positives over counts)."""

    z: float
    p_value: float
    baseline_rate: float
    recent_rate: float


def two_proportion_z_test(
    baseline_positives: int, baseline_count: int, recent_positives: int, recent_count: int
) -> ZTest | None:
    """z = (p2 - p1) / sqrt(p(1 - p)(1/n1 + 1/n2)) with p the pooled rate; the two-sided
    p-value 2(1 - Phi(|z|)). None when a count is 0 or the pooled rate is 0 or 1."""
    if baseline_count <= 0 or recent_count <= 0:
        return None
    p1 = baseline_positives / baseline_count
    p2 = recent_positives / recent_count
    pooled = (baseline_positives + recent_positives) / (baseline_count + recent_count)
    variance = pooled * (1 - pooled) * (1 / baseline_count + 1 / recent_count)
    if variance <= 0:
        return None
    z = (p2 - p1) / math.sqrt(variance)
    p_value = math.erfc(abs(z) / math.sqrt(2))
    return ZTest(z=z, p_value=p_value, baseline_rate=p1, recent_rate=p2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    id: int
    kind: AlertKind
    vendor: str
    code: str | None
    raised_at: datetime
    detail: dict[str, object]
