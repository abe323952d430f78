"""Delivery: jobs from routing decisions, onto the bus, and out to the vendors.

* :class:`Dispatcher` creates the jobs of a decision and publishes them,
  re-publishes every unfinished job at start, and puts failed jobs back on the
  bus when their backoff has passed.
* :class:`DeliveryWorker` consumes the vendors' queues (as many at once per
  vendor as its concurrency), claims each job, sends the study with the
  vendor's transport and records the outcome; the queue message is
  acknowledged only after that state change is committed.

The store is the source of truth: a message only says "look at job N, attempt
K"; a duplicate or stale one finds the job no longer claimable and is dropped.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from structlog.stdlib import BoundLogger

from broker.engine.bus import Bus, BusError, Ticket
from broker.engine.metrics import count_error
from broker.model.domain import Priority
from broker.model.errors import ConfigError
from broker.model.jobs import RESENDABLE, Job, JobState, JobStateError, backoff
from broker.model.logging import get_logger
from broker.model.vendor import SendOutcome, VendorTransport, is_retryable
from broker.store import StudyStore
from broker.store.jobs import Created, JobStore

LOG = get_logger("radbridge.delivery")

Clock = Callable[[], datetime]
#: Called after a job reached ``sent`` (job, what the send did, when); must not raise.
SentHook = Callable[[Job, SendOutcome, datetime], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class VendorSpec:
    """How to deliver to one vendor product: transport, concurrency and retry policy."""

    name: str
    transport: str
    """The registered transport type (``dicom``; later ``dicomweb``, ``http``)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """The transport's own settings (for ``dicom``: ae_title, host, port, …)."""
    concurrency: int = 1
    """Jobs of this vendor in flight at once, per worker process."""
    max_attempts: int = 5
    backoff_base: float = 30.0
    """Seconds; the wait before retry n is drawn from [0, min(cap, base * 2**(n-1))]."""
    backoff_cap: float = 3600.0

    def __post_init__(self) -> None:
        problems = []
        if self.concurrency < 1:
            problems.append(f"concurrency is {self.concurrency}; valid: 1 or more")
        if self.max_attempts < 1:
            problems.append(f"max_attempts is {self.max_attempts}; valid: 1 or more")
        if self.backoff_base < 0 or self.backoff_cap < self.backoff_base:
            problems.append(
                f"backoff base {self.backoff_base} s, cap {self.backoff_cap} s; "
                "valid: 0 <= base <= cap"
            )
        if problems:
            lines = [f"vendors.{self.name}: {p}" for p in problems]
            raise ConfigError(lines[0], lines)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One study for one vendor product, as a routing decision asks for it."""

    study_uid: str
    vendor: str
    route: str
    priority: Priority = Priority.ROUTINE
    series_uids: tuple[str, ...] = ()
    deadline: timedelta | None = None
    study_revision: int = 0
    resend: bool = False
    """The vendor had the study already; send it again (the study was updated)."""


def _spec(vendors: Mapping[str, VendorSpec], name: str) -> VendorSpec:
    try:
        return vendors[name]
    except KeyError:
        valid = ", ".join(sorted(vendors)) or "none configured"
        raise ConfigError(f"no vendor '{name}' is configured; valid: {valid}") from None


class Dispatcher:
    """Creates jobs and keeps the bus in step with the store."""

    def __init__(
        self,
        jobs: JobStore,
        bus: Bus,
        vendors: Mapping[str, VendorSpec],
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.jobs = jobs
        self.bus = bus
        self.vendors = vendors
        self.clock = clock
        self._unpublished: dict[int, Job] = {}
        self._lock = threading.Lock()

    def dispatch(self, requests: Iterable[JobRequest]) -> list[Created]:
        """Create a job per request (an existing one is kept) and publish the new ones."""
        results = []
        for request in requests:
            spec = _spec(self.vendors, request.vendor)
            now = self.clock()
            created = self.jobs.create(
                request.study_uid,
                request.vendor,
                route=request.route,
                priority=request.priority,
                max_attempts=spec.max_attempts,
                series_uids=request.series_uids,
                deadline_at=now + request.deadline if request.deadline else None,
                study_revision=request.study_revision,
                now=now,
            )
            if created.duplicate and request.resend and created.job.state in RESENDABLE:
                if request.study_revision > created.job.study_revision:
                    job = self.jobs.resend(
                        created.job.id,
                        study_revision=request.study_revision,
                        series_uids=request.series_uids,
                        now=now,
                    )
                    LOG.info("updated study sent again", job_id=job.id, vendor=job.vendor)
                    self.requeue_due(now)
                    created = Created(job=job, duplicate=False)
            elif created.duplicate:
                LOG.info(
                    "job exists already",
                    job_id=created.job.id,
                    vendor=request.vendor,
                    state=str(created.job.state),
                    study_uid=request.study_uid,
                )
            else:
                self.publish(created.job)
            results.append(created)
        return results

    def publish(self, job: Job) -> bool:
        """Put a pending job on its vendor's queue; False if the bus failed (tried again later)."""
        try:
            self.bus.publish(job.vendor, job.id, job.attempts + 1, job.priority.bus_priority)
        except BusError as exc:
            LOG.error("cannot publish job; will try again", job_id=job.id, error=str(exc))
            with self._lock:
                self._unpublished[job.id] = job
            return False
        with self._lock:
            self._unpublished.pop(job.id, None)
        return True

    def retry(self, job_id: int) -> Job:
        """Operator: start a dead or failed job over and publish it."""
        job = self.jobs.retry(job_id, now=self.clock())
        LOG.info("job retried by the operator", job_id=job_id, vendor=job.vendor)
        self.requeue_due()
        return job

    def start(self) -> int:
        """After a (re)start: recover interrupted jobs and publish every pending one.

        A job found in ``sending`` was interrupted: its attempt counts, and it
        is failed (retried at once) or dead if that was its last attempt.
        Run this where no other worker is sending (see
        :meth:`JobStore.recover_interrupted`). Returns how many were published.
        """
        now = self.clock()
        for job in self.jobs.recover_interrupted(now=now):
            LOG.warning(
                "job was interrupted while sending",
                job_id=job.id,
                vendor=job.vendor,
                attempt=job.attempts,
                state=str(job.state),
            )
        published = 0
        for job in self.jobs.list(state=JobState.PENDING, limit=1_000_000):
            published += self.publish(job)
        return published + len(self.requeue_due(now))

    def requeue_due(self, now: datetime | None = None) -> list[Job]:
        """Publish failed jobs whose backoff has passed (and any that failed to publish)."""
        with self._lock:
            retry_publish = list(self._unpublished.values())
        for job in retry_publish:
            self.publish(job)
        moved = self.jobs.requeue_due(now or self.clock())
        moved += self.jobs.take_released(now or self.clock())
        for job in moved:
            self.publish(job)
        return moved

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Requeue due retries until ``stop`` is set; wakes at the next due time or ``interval``."""
        while not stop.is_set():
            try:
                self.requeue_due()
                wait = interval
                next_at = self.jobs.next_retry_at()
                if next_at is not None:
                    wait = min(interval, max((next_at - self.clock()).total_seconds(), 0.005))
            except Exception:  # the store or the bus is down: try again later
                LOG.exception("requeueing due retries failed")
                wait = interval
            stop.wait(wait)


class DeliveryWorker:
    """Consumes vendor queues and delivers each job with its vendor's transport."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        vendors: Mapping[str, VendorSpec],
        transports: Mapping[str, VendorTransport],
        *,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        on_sent: Sequence[SentHook] = (),
    ) -> None:
        missing = sorted(set(vendors) - set(transports))
        if missing:
            raise ConfigError(f"no transport built for vendor(s) {', '.join(missing)}")
        self.engine = engine
        self.jobs = JobStore(engine)
        self.studies = StudyStore(engine)
        self.bus = bus
        self.vendors = vendors
        self.transports = transports
        self.clock = clock
        self.jitter = jitter
        self.on_sent = list(on_sent)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- running

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        """Consume every configured vendor's queue until ``stop`` is set (this thread)."""
        prefetch = {name: spec.concurrency for name, spec in self.vendors.items()}
        self.bus.consume(prefetch, self.handle, stop, ready=ready)

    def start(self, timeout: float = 30.0) -> DeliveryWorker:
        """Run in a background thread; return once its consumers are registered."""
        ready = threading.Event()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(self._stop, ready), name="delivery-worker", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise BusError(f"the delivery worker could not consume from {self.bus!r}")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop consuming; the deliveries in progress finish first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---------------------------------------------------------------- one job

    def handle(self, ticket: Ticket) -> None:
        """Deliver the job a message names, or drop the message if it is a duplicate."""
        job = self.jobs.claim(ticket.job_id, attempt=ticket.attempt, now=self.clock())
        log = LOG.bind(job_id=ticket.job_id, vendor=ticket.vendor, attempt=ticket.attempt)
        if job is None:
            log.info("duplicate or stale message dropped", redelivered=ticket.redelivered)
            return
        log = log.bind(study_uid=job.study_uid)
        spec = _spec(self.vendors, job.vendor)
        transport = self.transports[job.vendor]
        files = [Path(p) for p in self.studies.instance_paths(job.study_uid, job.series_uids)]
        if not files:
            self._finish(job, [JobState.DEAD], error="the study has no instances in the store")
            log.error("nothing to send", series=len(job.series_uids))
            return
        log.info("sending", instances=len(files))
        try:
            outcome = transport.send(job, files)
        except Exception as exc:
            self._failed(job, spec, transport, exc, log)
            return
        self._finish(job, [JobState.SENT, JobState.AWAITING_RESULT])
        for hook in self.on_sent:  # notification hooks (usage, audit, metrics): the vendor has it
            try:
                hook(job, outcome, self.clock())
            except Exception:
                log.exception("sent hook failed")
        log.info(
            "sent",
            instances=outcome.instances,
            megabytes=round(outcome.bytes / 1e6, 1),
            seconds=round(outcome.seconds, 3),
            mb_per_s=round(outcome.megabytes_per_second, 1),
        )

    def _failed(
        self,
        job: Job,
        spec: VendorSpec,
        transport: VendorTransport,
        exc: Exception,
        log: BoundLogger,
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        count_error("delivery", exc)
        if is_retryable(transport, exc) and not job.exhausted:
            wait = backoff(job.attempts, spec.backoff_base, spec.backoff_cap, self.jitter)
            at = self.clock() + timedelta(seconds=wait)
            self._finish(job, [JobState.FAILED], error=error, next_attempt_at=at)
            log.warning("delivery failed; will retry", error=error, retry_in=round(wait, 3))
            return
        self._finish(job, [JobState.DEAD], error=error)
        reason = "attempts exhausted" if job.exhausted else "not retryable"
        log.error(f"delivery failed; job is dead ({reason})", error=error)

    def _finish(
        self,
        job: Job,
        path: Sequence[JobState],
        *,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        try:
            self.jobs.finish(
                job.id, path, error=error, next_attempt_at=next_attempt_at, now=self.clock()
            )
        except JobStateError as exc:  # an operator cancelled it meanwhile
            LOG.warning("job changed while it was sent", job_id=job.id, error=str(exc))
