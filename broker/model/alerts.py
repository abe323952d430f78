"""What the vendor watch raises about an AI product, and the drift test. Pure: no I/O.

- ``drift``: the positive rate of a finding code in the recent window differs from the
  baseline's by a **two-proportion z-test** (pooled standard error) with a two-sided
  p-value below ``monitoring.drift.alpha`` (a drift of the kind ``positive_rate``), or the
  distribution of its probabilities (the findings' scores) does by a **two-sample
  Kolmogorov-Smirnov test** (the kind ``probability``);
- ``version_changed``: the product reports another software version than before;
- ``results_missing``: the vendor took studies but returned results for fewer than a
  configured share of them in a window;
- ``canary_failed``: a synthetic study sent through the whole loop got no result within
  its deadline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


class DriftKind(CodedValue):
    """What drifted: the share of findings present, or the distribution of their scores."""

    POSITIVE_RATE = "positive_rate"
    PROBABILITY = "probability"


@dataclass(frozen=True, slots=True)
class KSTest:
    """A two-sample Kolmogorov-Smirnov test of ``recent`` against ``baseline`` values."""

    d: float
    """The largest distance between the two empirical distribution functions."""
    p_value: float
    baseline_count: int
    recent_count: int


def kolmogorov_q(lam: float) -> float:
    """Q(λ) = 2 Σ_{k≥1} (-1)^(k-1) exp(-2 k² λ²): the probability that the Kolmogorov
    statistic exceeds λ (1 for λ near 0, where the series converges too slowly to sum)."""
    if lam < 0.2:
        return 1.0
    total, sign = 0.0, 1.0
    for k in range(1, 101):
        term = sign * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
        sign = -sign
    return min(max(2.0 * total, 0.0), 1.0)


def ks_two_sample(baseline: Sequence[float], recent: Sequence[float]) -> KSTest | None:
    """D = sup_x |F1(x) - F2(x)| of the two empirical distribution functions, and the
    asymptotic p-value Q((√n + 0.12 + 0.11/√n) D) with n = n1 n2 / (n1 + n2) (Stephens'
    correction for small samples, as in Numerical Recipes' ``kstwo``). None when a sample
    is empty."""
    n1, n2 = len(baseline), len(recent)
    if n1 == 0 or n2 == 0:
        return None
    a, b = sorted(baseline), sorted(recent)
    i = j = 0
    d = 0.0
    while i < n1 and j < n2:
        x = min(a[i], b[j])
        while i < n1 and a[i] == x:  # ties step both functions at once
            i += 1
        while j < n2 and b[j] == x:
            j += 1
        d = max(d, abs(i / n1 - j / n2))
    n = n1 * n2 / (n1 + n2)
    root = math.sqrt(n)
    p_value = kolmogorov_q((root + 0.12 + 0.11 / root) * d)
    return KSTest(d=d, p_value=p_value, baseline_count=n1, recent_count=n2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    id: int
    kind: AlertKind
    vendor: str
    code: str | None
    raised_at: datetime
    detail: dict[str, object]
    delivery_id: int | None = None
    """Its notification to the webhook (a delivery), when one is configured."""
    cleared_at: datetime | None = None
    """When the condition ended (a canary answered again); None: not cleared."""
