"""The vendor watch: raises ``drift``, ``results_missing`` and ``version_changed`` alerts
(:mod:`broker.model.alerts`) once each, into the store, the log (a warning), the metric
``radbridge_vendor_alerts`` and the console's dashboard.

- Every ``monitoring.check_every`` (a task of the job engine's timer), for each vendor:
  the positive rate of each finding code in the last ``drift.window`` against the
  ``drift.baseline`` before it (two-proportion z-test at ``drift.alpha``; one alert per
  code and window), and the share of the studies sent in the last ``results_missing.window``
  (each at least ``after`` ago) that have a result (one alert per window).
- When a result completes (the results timer's hook): the product's reported version
  against the vendor's previous result; a change is one alert per change (from, to), and the
  performance figures count results by version from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from broker.model.alerts import Alert, AlertKind, two_proportion_z_test
from broker.model.logging import get_logger
from broker.store.alerts import AlertStore
from broker.store.watch import answered, code_rates, versions_around
from config.schema import Settings

LOG = get_logger("radbridge.watch")


def _window_key(now: datetime, seconds: float) -> str:
    """The window ``now`` falls in, as a key: one alert per condition and window."""
    return str(int(now.timestamp() // max(seconds, 1.0)))


class VendorWatch:
    """The timer's task and the results hook of the vendor watch."""

    def __init__(self, engine: Engine, settings: Callable[[], Settings]) -> None:
        self.engine = engine
        self.settings = settings
        self.alerts = AlertStore(engine)
        self._next: datetime | None = None

    def _raised(self, alert: Alert | None) -> None:
        if alert is not None:
            LOG.warning(
                f"vendor alert: {alert.kind.value}",
                vendor=alert.vendor,
                code=alert.code,
                detail=alert.detail.get("summary"),
            )

    def __call__(self, now: datetime) -> datetime | None:
        settings = self.settings()
        every = settings.monitoring.check_every
        if self._next is None or now >= self._next:
            self._next = now + timedelta(seconds=every)
            for vendor in sorted(settings.vendors):
                try:
                    self.check(vendor, now)
                except Exception:  # one vendor's check never stops the timer's others
                    LOG.exception("the vendor watch failed", vendor=vendor)
        return self._next

    def check(self, vendor: str, now: datetime) -> list[Alert]:
        """Drift and missing results of one vendor at ``now``; the alerts newly raised."""
        monitoring = self.settings().monitoring
        raised: list[Alert] = []
        drift = monitoring.drift
        window = timedelta(seconds=drift.window)
        recent = code_rates(self.engine, vendor, now - window, now)
        base_start = now - window - timedelta(seconds=drift.baseline)
        baseline = code_rates(self.engine, vendor, base_start, now - window)
        for code, (positives, count) in sorted(recent.items()):
            base_positives, base_count = baseline.get(code, (0, 0))
            if min(count, base_count) < drift.min_findings:
                continue
            test = two_proportion_z_test(base_positives, base_count, positives, count)
            if test is None or test.p_value >= drift.alpha:
                continue
            summary = (
                f"{code} positive rate {test.recent_rate:.1%} ({positives}/{count}) against "
                f"{test.baseline_rate:.1%} ({base_positives}/{base_count}); "
                f"two-proportion z = {test.z:.2f}, p = {test.p_value:.2g} < {drift.alpha}"
            )
            found = self.alerts.raise_once(
                AlertKind.DRIFT,
                vendor,
                {"summary": summary, "z": test.z, "p_value": test.p_value},
                code=code,
                key=_window_key(now, drift.window),
                now=now,
            )
            self._raised(found)
            raised += [found] if found else []
        missing = monitoring.results_missing
        end = now - timedelta(seconds=missing.after)
        share = answered(self.engine, vendor, end - timedelta(seconds=missing.window), end)
        if share.sent >= missing.min_studies and share.answered < missing.min_share * share.sent:
            summary = (
                f"results for {share.answered} of {share.sent} studies sent "
                f"(less than {missing.min_share:.0%})"
            )
            found = self.alerts.raise_once(
                AlertKind.RESULTS_MISSING,
                vendor,
                {"summary": summary, "sent": share.sent, "answered": share.answered},
                key=_window_key(now, missing.window),
                now=now,
            )
            self._raised(found)
            raised += [found] if found else []
        return raised

    def result_complete(self, result_id: int) -> None:
        """The results timer's hook: a new product version raises ``version_changed``."""
        vendor, version, previous = versions_around(self.engine, result_id)
        if vendor is None or version is None or previous is None or version == previous:
            return
        summary = f"the product reports version {version} (before: {previous})"
        self._raised(
            self.alerts.raise_once(
                AlertKind.VERSION_CHANGED,
                vendor,
                {
                    "summary": summary,
                    "version": version,
                    "previous": previous,
                    "result_id": result_id,
                },
                key=f"{previous}->{version}",
            )
        )
