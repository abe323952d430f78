"""The vendor watch: raises ``drift``, ``results_missing`` and ``version_changed`` alerts
(:mod:`broker.model.alerts`) once each, into the store, the log (a warning), the metric
``radbridge_vendor_alerts``, the console's dashboard and, when ``notifications.webhook``
is configured, the webhook (a notification made with the alert, in its transaction).

- Every ``monitoring.check_every`` (a task of the job engine's timer), for each vendor:
  the positive rate of each finding code in the last ``drift.window`` against the
  ``drift.baseline`` before it (two-proportion z-test at ``drift.alpha``) and the
  distribution of the code's probabilities (two-sample Kolmogorov-Smirnov test at the same
  level), one alert per code, kind and window; and the share of the studies sent in the
  last ``results_missing.window`` (each at least ``after`` ago) that have a result (one
  alert per window).
- When a result completes (the results timer's hook): the product's reported version
  against the vendor's previous result; a change is one alert per change (from, to), and the
  performance figures count results by version from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine

from broker.model.alerts import (
    Alert,
    AlertKind,
    DriftKind,
    ks_two_sample,
    two_proportion_z_test,
)
from broker.model.logging import get_logger
from broker.store.alerts import AlertStore
from broker.store.deliveries import NewDelivery
from broker.store.watch import CodeTally, answered, code_tallies, versions_around
from config.monitoring import Drift
from config.schema import Settings

LOG = get_logger("radbridge.watch")
#: The webhook's notification to fill in for an alert (None: no webhook configured).
Notify = Callable[[], NewDelivery | None]


def _no_webhook() -> NewDelivery | None:
    return None


def _no_wake(_target: str) -> None:
    return None


def _window_key(now: datetime, seconds: float) -> str:
    """The window ``now`` falls in, as a key: one alert per condition and window."""
    return str(int(now.timestamp() // max(seconds, 1.0)))


class VendorWatch:
    """The timer's task and the results hook of the vendor watch."""

    def __init__(
        self,
        engine: Engine,
        settings: Callable[[], Settings],
        *,
        notify: Notify = _no_webhook,
        wake: Callable[[str], None] = _no_wake,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.alerts = AlertStore(engine)
        self.notify = notify
        """The webhook's notification (``WritebackStage.webhook_notice``)."""
        self.wake = wake
        """Wake the webhook's lane for a new notification."""
        self._next: datetime | None = None

    def raise_alert(
        self,
        kind: AlertKind,
        vendor: str,
        detail: dict[str, object],
        *,
        key: str,
        code: str | None = None,
        now: datetime | None = None,
        study_uid: str = "",
    ) -> Alert | None:
        """Raise the alert once (per kind, vendor, code and ``key``): into the store with its
        webhook notification, and the log; the alert, or None when it was raised before."""
        notify = self.notify()
        alert = self.alerts.raise_once(
            kind, vendor, detail, code=code, key=key, now=now, notify=notify, study_uid=study_uid
        )
        if alert is None:
            return None
        LOG.warning(
            f"vendor alert: {alert.kind.value}",
            vendor=alert.vendor,
            code=alert.code,
            detail=alert.detail.get("summary"),
            notified=alert.delivery_id is not None,
        )
        if notify is not None and alert.delivery_id is not None:
            self.wake(notify.target)
        return alert

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
        recent = code_tallies(self.engine, vendor, now - window, now)
        base_start = now - window - timedelta(seconds=drift.baseline)
        baseline = code_tallies(self.engine, vendor, base_start, now - window)
        for code, tally in sorted(recent.items()):
            raised += self._drift(vendor, code, baseline.get(code, CodeTally()), tally, now)
        missing = monitoring.results_missing
        end = now - timedelta(seconds=missing.after)
        share = answered(self.engine, vendor, end - timedelta(seconds=missing.window), end)
        if share.sent >= missing.min_studies and share.answered < missing.min_share * share.sent:
            summary = (
                f"results for {share.answered} of {share.sent} studies sent "
                f"(less than {missing.min_share:.0%})"
            )
            found = self.raise_alert(
                AlertKind.RESULTS_MISSING,
                vendor,
                {"summary": summary, "sent": share.sent, "answered": share.answered},
                key=_window_key(now, missing.window),
                now=now,
            )
            raised += [found] if found else []
        return raised

    def _drift(
        self, vendor: str, code: str, base: CodeTally, recent: CodeTally, now: datetime
    ) -> list[Alert]:
        """One code's drift alerts: its positive rate (two-proportion z-test) and the
        distribution of its probabilities (two-sample Kolmogorov-Smirnov test)."""
        drift: Drift = self.settings().monitoring.drift
        window = _window_key(now, drift.window)
        raised: list[Alert] = []
        if min(recent.count, base.count) >= drift.min_findings:
            test = two_proportion_z_test(base.positives, base.count, recent.positives, recent.count)
            if test is not None and test.p_value < drift.alpha:
                summary = (
                    f"{code} positive rate {test.recent_rate:.1%} ({recent.positives}/"
                    f"{recent.count}) against {test.baseline_rate:.1%} ({base.positives}/"
                    f"{base.count}); two-proportion z = {test.z:.2f}, "
                    f"p = {test.p_value:.2g} < {drift.alpha}"
                )
                detail: dict[str, object] = {
                    "summary": summary,
                    "drift": DriftKind.POSITIVE_RATE.value,
                    "z": test.z,
                    "p_value": test.p_value,
                }
                found = self.raise_alert(
                    AlertKind.DRIFT, vendor, detail, code=code, key=window, now=now
                )
                raised += [found] if found else []
        if min(len(recent.scores), len(base.scores)) >= drift.min_findings:
            ks = ks_two_sample(base.scores, recent.scores)
            if ks is not None and ks.p_value < drift.alpha:
                mean_recent = sum(recent.scores) / len(recent.scores)
                mean_base = sum(base.scores) / len(base.scores)
                summary = (
                    f"{code} probabilities (mean {mean_recent:.2f} of {ks.recent_count}) "
                    f"against (mean {mean_base:.2f} of {ks.baseline_count}); "
                    f"Kolmogorov-Smirnov D = {ks.d:.2f}, p = {ks.p_value:.2g} < {drift.alpha}"
                )
                detail = {
                    "summary": summary,
                    "drift": DriftKind.PROBABILITY.value,
                    "d": ks.d,
                    "p_value": ks.p_value,
                }
                key = f"{DriftKind.PROBABILITY.value}:{window}"
                found = self.raise_alert(
                    AlertKind.DRIFT, vendor, detail, code=code, key=key, now=now
                )
                raised += [found] if found else []
        return raised

    def result_complete(self, result_id: int) -> None:
        """The results timer's hook: a new product version raises ``version_changed``."""
        vendor, version, previous = versions_around(self.engine, result_id)
        if vendor is None or version is None or previous is None or version == previous:
            return
        summary = f"the product reports version {version} (before: {previous})"
        self.raise_alert(
            AlertKind.VERSION_CHANGED,
            vendor,
            {"summary": summary, "version": version, "previous": previous, "result_id": result_id},
            key=f"{previous}->{version}",
        )
