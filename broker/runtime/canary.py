"""Canaries (:mod:`broker.model.canary`): a vendor's ``canary`` block sends it a synthetic
study every ``every``, through the whole loop, and expects a result within ``deadline``.

- :class:`Canaries` is a task of the job engine's timer. For each vendor with a canary it
  claims the current period's run in the store (one row per vendor and period: of several
  ``radbridge serve`` processes one makes it), writes the study with the harness generator
  (the ``canary_study`` entry point: the broker never imports an adapter) into the spool's
  ``canary`` folder, indexes it as stable and never routed, and makes the one job of the
  route :data:`~broker.model.canary.CANARY_ROUTE` for that vendor.
- Then, every check: a run whose job has a complete result by the deadline ``passed`` and
  clears the vendor's ``canary_failed`` alert; a run past its deadline without one, or
  whose job was given up (its ``attempts``, default one, spent: a canary never holds the
  vendor's lane through the clinical retries), ``failed`` and raises ``canary_failed``
  (log, metric, console, webhook) unless the vendor's last one is still open: once per
  occurrence, not per run.
- :meth:`Canaries.run_now` makes one at once (``radbridge vendors canary V``); the
  service's timer decides it.

A paused vendor (maintenance) gets no canary: its jobs wait, so a canary could only fail.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine

from broker.model.alerts import AlertKind
from broker.model.canary import CANARY_ROUTE, CanaryRun, CanaryState
from broker.model.domain import InstanceRecord
from broker.model.errors import RadbridgeError
from broker.model.jobs import Job, JobState
from broker.model.logging import get_logger
from broker.model.plugins import registered
from broker.runtime.watch import VendorWatch
from broker.store import StudyStore
from broker.store.alerts import AlertStore
from broker.store.canaries import CanaryStore
from broker.store.jobs import JOBS, JobStore
from broker.store.pauses import LanePauses
from broker.store.spool import Spool
from config.monitoring import Canary
from config.schema import Settings

LOG = get_logger("radbridge.canary")

#: Job states a canary's job is given up in: the run fails at once, not at its deadline.
GIVEN_UP = frozenset({JobState.DEAD, JobState.CANCELLED})
#: How often the timer looks at open runs and due periods.
CHECK_SECONDS = 1.0
#: The stable time a canary study is indexed with: it is kept stable by hand, never closed.
HOLD_SECONDS = 10 * 365 * 86400.0


class MakeCanary(Protocol):
    """The ``canary_study`` entry point (:func:`adapters.dicom.canary.make_canary_study`)."""

    def __call__(
        self, folder: Path, *, kind: str, vendor: str, run: int, instances: int | None = None
    ) -> list[InstanceRecord]: ...


def _ignore(_job: Job) -> None:
    return None


def period_of(canary: Canary, now: datetime) -> str:
    """The timer's period ``now`` falls in: one run per vendor and period."""
    return f"every {canary.every:g}s #{int(now.timestamp() // canary.every)}"


def next_period(canary: Canary, now: datetime) -> datetime:
    """When the period after the one ``now`` falls in starts."""
    start = (int(now.timestamp() // canary.every) + 1) * canary.every
    return datetime.fromtimestamp(start, UTC)


class Canaries:
    """The timer's canary task, and one run now."""

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        settings: Callable[[], Settings],
        *,
        watch: VendorWatch | None = None,
        publish: Callable[[Job], object] = _ignore,
    ) -> None:
        self.engine = engine
        self.folder = spool.canaries
        self.settings = settings
        self.watch = watch
        """Raises ``canary_failed`` (the service's vendor watch); None: runs are not decided."""
        self.publish = publish
        """Wakes a worker for the new job (the dispatcher); the lanes' polling otherwise."""
        self.runs = CanaryStore(engine)
        self.studies = StudyStore(engine)
        self.jobs = JobStore(engine)
        self.alerts = AlertStore(engine)
        self.pauses = LanePauses(engine, JOBS)
        self._next: datetime | None = None
        self._claimed: dict[str, str] = {}
        """The period each vendor's run was last claimed for here (no claim to try again)."""

    def __call__(self, now: datetime) -> datetime | None:
        if self._next is not None and now < self._next:
            return self._next
        self._next = now + timedelta(seconds=CHECK_SECONDS)
        settings = self.settings()
        canaries = {n: v.canary for n, v in sorted(settings.vendors.items()) if v.canary}
        paused = self.pauses.current(now) if canaries else {}
        for name, canary in canaries.items():
            if name in paused:
                continue
            period = period_of(canary, now)
            if self._claimed.get(name) == period:
                continue
            self._claimed[name] = period  # made here, or by another process: tried once
            try:
                self.start(name, period, actor="timer", now=now)
            except Exception:  # one vendor's canary never stops the others
                LOG.exception("the canary could not be started", vendor=name)
        runs = self.runs.open() if self.watch is not None else []
        decided = self._decide(runs, now)
        # Open runs are looked at every second; otherwise the next period's start is due.
        if len(decided) < len(runs):
            return self._next
        starts = [next_period(c, now) for n, c in canaries.items() if n not in paused]
        return min(starts, default=None)

    def run_now(self, vendor: str, *, actor: str, now: datetime | None = None) -> CanaryRun:
        """One canary for ``vendor`` at once (whatever its period); the run made."""
        now = now or datetime.now(UTC)
        run = self.start(vendor, f"now {now.isoformat()}", actor=actor, now=now)
        if run is None:  # the same instant twice: that run
            raise RadbridgeError(f"a canary of {vendor} was started at this instant already")
        return run

    def start(self, vendor: str, period: str, *, actor: str, now: datetime) -> CanaryRun | None:
        """Claim the run of ``period`` and make it; None when it was claimed before."""
        settings = self.settings()
        spec = settings.vendors.get(vendor)
        if spec is None or spec.canary is None:
            raise RadbridgeError(f"vendor {vendor!r} has no canary block; add canary: {{every: …}}")
        canary = spec.canary
        deadline_at = now + timedelta(seconds=canary.deadline)
        run = self.runs.claim(vendor, period, actor=actor, deadline_at=deadline_at, now=now)
        if run is None:
            return None
        log = LOG.bind(vendor=vendor, canary_run=run.id)
        try:
            make: MakeCanary = registered("canary_study")
            records = make(
                self.folder / f"run{run.id}",
                kind=canary.template,
                vendor=vendor,
                run=run.id,
                instances=canary.instances,
            )
            for record in records:
                self.studies.record_instance(record, stable_seconds=HOLD_SECONDS)
            study_uid = records[0].study_uid
            self.studies.keep_unrouted(study_uid, now)
            created = self.jobs.create(
                study_uid, vendor, route=CANARY_ROUTE, max_attempts=canary.attempts, now=now
            )
            self.runs.made(run.id, study_uid, created.job.id)
        except (RadbridgeError, OSError, ValueError, IndexError) as exc:
            self.runs.finish(run.id, CanaryState.FAILED, now=now, error=f"not made: {exc}")
            log.error("the canary study could not be made", error=str(exc))
            raise RadbridgeError(f"the canary of {vendor} could not be made: {exc}") from exc
        self.publish(created.job)
        log.info(
            "canary sent",
            job_id=created.job.id,
            template=canary.template,
            deadline_at=deadline_at.isoformat(timespec="seconds"),
            actor=actor,
        )
        return self.runs.get(run.id)

    def check(self, now: datetime) -> list[CanaryRun]:
        """Decide the open runs that can be: the runs decided now."""
        return self._decide(self.runs.open(), now) if self.watch is not None else []

    def _decide(self, runs: list[CanaryRun], now: datetime) -> list[CanaryRun]:
        if self.watch is None:
            return []
        decided = []
        for run in runs:
            answered = self.runs.answered_at(run)
            if answered is not None and answered <= run.deadline_at:
                if self.runs.finish(run.id, CanaryState.PASSED, now=now):
                    cleared = self.alerts.clear(AlertKind.CANARY_FAILED, run.vendor, now=now)
                    LOG.info(
                        "canary answered", vendor=run.vendor, canary_run=run.id, cleared=cleared
                    )
                    decided.append(run)
            elif (given_up := self._given_up(run)) is not None or now >= run.deadline_at:
                if given_up is not None:
                    error = given_up
                elif run.job_id:
                    error = "no result by the deadline"
                else:
                    error = "the study was not made"
                if self.runs.finish(run.id, CanaryState.FAILED, now=now, error=error):
                    self._failed(run, error, now)
                    decided.append(run)
        return decided

    def _given_up(self, run: CanaryRun) -> str | None:
        """Why the run's job was given up (its attempts spent, or cancelled); None: it was not."""
        if run.job_id is None:
            return None
        job = self.jobs.get(run.job_id)
        if job.state not in GIVEN_UP:
            return None
        return f"the send was given up ({job.state.value} after {job.attempts} attempt(s)): " + (
            job.last_error or "no error recorded"
        )

    def _failed(self, run: CanaryRun, error: str, now: datetime) -> None:
        assert self.watch is not None
        still_open = any(
            a.cleared_at is None
            for a in self.alerts.list(vendor=run.vendor, kind=AlertKind.CANARY_FAILED, limit=1)
        )
        if still_open:
            LOG.warning("canary failed again", vendor=run.vendor, canary_run=run.id, error=error)
            return
        summary = (
            f"canary {run.id} (job {run.job_id}) sent {run.started_at:%Y-%m-%d %H:%M} UTC: "
            f"{error} ({run.deadline_at:%H:%M:%S} UTC)"
        )
        self.watch.raise_alert(
            AlertKind.CANARY_FAILED,
            run.vendor,
            {"summary": summary, "run_id": run.id, "job_id": run.job_id, "error": error},
            key=f"run:{run.id}",
            now=now,
            study_uid=run.study_uid or "",
        )
