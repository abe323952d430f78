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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from structlog.stdlib import BoundLogger

from broker.engine.bus import Bus, BusError, Ticket
from broker.engine.metrics import count_error
from broker.engine.plan import Plan, Plans, VendorSpec
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


class Dispatcher:
    """Creates jobs and keeps the bus in step with the store."""

    def __init__(
        self,
        jobs: JobStore,
        bus: Bus,
        plans: Plans,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.jobs = jobs
        self.bus = bus
        self.plans = plans
        self.clock = clock
        self._unpublished: dict[int, Job] = {}
        self._lock = threading.Lock()

    def dispatch(self, requests: Iterable[JobRequest], plan: Plan | None = None) -> list[Created]:
        """Create a job per request (an existing one is kept) and publish the new ones.

        ``plan`` is the configuration the routing decision used (default: the one in force).
        """
        plan = plan or self.plans.current
        results = []
        for request in requests:
            spec = plan.vendor(request.vendor)
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


def _prefetch(plan: Plan) -> dict[str, int]:
    """Each vendor's queue and how many of its jobs this worker takes at once."""
    return {name: plan.vendor(name).concurrency for name in plan.vendor_names}


class DeliveryWorker:
    """Consumes vendor queues and delivers each job with its vendor's transport."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        plans: Plans,
        *,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        on_sent: Sequence[SentHook] = (),
    ) -> None:
        self.engine = engine
        self.jobs = JobStore(engine)
        self.studies = StudyStore(engine)
        self.bus = bus
        self.plans = plans
        self.clock = clock
        self.jitter = jitter
        self.on_sent = list(on_sent)
        self._stop = threading.Event()
        self._round = threading.Event()
        self._thread: threading.Thread | None = None
        plans.on_swap(self._replan)

    @property
    def vendors(self) -> list[str]:
        """The vendors whose queues this worker consumes (those of the plan in force)."""
        return sorted(self.plans.current.vendor_names)

    # ---------------------------------------------------------------- running

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        """Consume every configured vendor's queue until ``stop`` is set (this thread).

        When a new configuration adds or removes a vendor or changes a vendor's
        concurrency, the consumers are registered again for it (sends in
        progress finish first).
        """
        while not stop.is_set():
            self._round = threading.Event()
            if stop.is_set():
                break
            self.bus.consume(_prefetch(self.plans.current), self.handle, self._round, ready=ready)
            ready = None

    def _replan(self, old: Plan, new: Plan) -> None:
        """A swap listener: consume again when the vendors or their concurrency changed."""
        if _prefetch(old) != _prefetch(new):
            self._round.set()

    def start(self, timeout: float = 30.0) -> DeliveryWorker:
        """Run in a background thread; return once its consumers are registered."""
        ready = threading.Event()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run_until_stopped, args=(ready,), name="delivery-worker", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise BusError(f"the delivery worker could not consume from {self.bus!r}")
        return self

    def _run_until_stopped(self, ready: threading.Event) -> None:
        self.run(self._stop, ready)

    def stop(self, timeout: float | None = None) -> None:
        """Stop consuming; the deliveries in progress finish first."""
        self._stop.set()
        self._round.set()
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
        with self.plans.use() as plan:
            log = log.bind(snapshot=plan.id)
            try:
                spec = plan.vendor(job.vendor)
                transport = plan.transport(job.vendor)
            except ConfigError as exc:
                self._finish(job, [JobState.DEAD], error=str(exc))
                log.error("the job's vendor is no longer configured; job is dead")
                return
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
