"""The write-back stage: completed results become deliveries; one worker per target sends them.

* :meth:`WritebackStage.schedule` is the results' ``on_complete`` hook. It makes
  one delivery per target of the job's route (``write_back``), plus, for an
  urgent result, the notifications (webhook, RIS order status), all in one
  transaction and idempotent (a result announced twice gets its deliveries
  once); then the job goes ``result_received → writing_back`` (``→ done`` at
  once when the route writes back nowhere).
* One worker thread per target claims that target's deliveries from the
  store, urgent first, then oldest first, and runs one attempt each. A target
  that is down only delays its own deliveries: its failures wait out their
  backoff (``delivery.backoff_*_seconds``, like vendor jobs) while every other
  target's thread carries on. After the target's ``retries`` the delivery is
  ``dead``; ``radbridge deliveries retry ID`` starts it over.
* When every write-back delivery of a job is done the job is ``done``; when
  one is dead the job is ``dead`` with the reason. Notifications do not decide
  the job.
* The overdue watcher flags jobs that have no result by their route's
  deadline, once each, and notifies the webhook.

The store is the source of truth: a restart turns deliveries interrupted in
``sending`` into ``failed`` (retried at once; the attempt counts) and settles
jobs whose deliveries all finished; results completed but not yet scheduled
are announced again by the results timer.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from broker.engine.metrics import observe_writeback
from broker.engine.plan import Plan, Plans
from broker.model.domain import LinkState, Result, StoredOrder, Study
from broker.model.errors import NotFoundError, RadbridgeError, StoreError
from broker.model.jobs import Job, JobState, JobStateError, backoff
from broker.model.logging import get_logger
from broker.model.writeback import (
    WEBHOOK_TARGET,
    Delivery,
    DeliveryKind,
    DeliveryState,
    TargetSpec,
    WritebackItem,
    is_retryable,
)
from broker.store import StudyStore
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.jobs import JobStore
from broker.store.orders import OrderStore

LOG = get_logger("radbridge.writeback")
POLL_SECONDS = 1.0

Clock = Callable[[], datetime]
ResultLoader = Callable[[int], Result]


def utc_now() -> datetime:
    return datetime.now(UTC)


class WritebackStage:
    """Schedules deliveries of completed results and runs a worker per target."""

    def __init__(
        self,
        engine: Engine,
        plans: Plans,
        *,
        results: ResultLoader,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.engine = engine
        self.plans = plans
        self.deliveries = DeliveryStore(engine)
        self.jobs = JobStore(engine)
        self.studies = StudyStore(engine)
        self.orders = OrderStore(engine)
        self.results = results
        """``ResultStore.get``: a result with its objects and findings, by id."""
        self.clock = clock
        self.jitter = jitter
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._wake: dict[str, threading.Event] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._threads: list[threading.Thread] = []
        plans.on_swap(lambda _old, _new: self._start_workers())

    def _wake_up(self, target: str) -> None:
        with self._lock:
            wake = self._wake.get(target)
        if wake is not None:
            wake.set()

    # ---------------------------------------------------------------- scheduling

    def schedule(self, result_id: int) -> list[Delivery]:
        """The ``on_complete`` hook: make the result's deliveries and move its job on."""
        result = self.results(result_id)
        log = LOG.bind(result_id=result_id, job_id=result.job_id)
        if result.job_id is None:
            log.warning("orphan result not written back (it matches no job)")
            return []
        job = self.jobs.get(result.job_id)
        with self.plans.use() as plan:
            log = log.bind(snapshot=plan.id)
            wanted = plan.write_back(job.route)
            if wanted is None:
                log.warning(
                    "the job's route is no longer configured; not written back", route=job.route
                )
                wanted = ()
            new: list[NewDelivery] = []
            for name in wanted:
                spec = plan.target(name)
                if spec is None:
                    log.error("write-back target is not configured; skipped", target=name)
                    continue
                new.append(self._new(result, job, spec, DeliveryKind.RESULT, "result"))
            if result.urgent:
                hook = plan.target(WEBHOOK_TARGET)
                if hook is not None:
                    new.append(self._new(result, job, hook, DeliveryKind.NOTIFY, "urgent_result"))
                ris = plan.target(plan.ris_status) if plan.ris_status else None
                if ris is not None:
                    new.append(self._new(result, job, ris, DeliveryKind.STATUS, "urgent_result"))
        made = self.deliveries.create(new, now=self.clock()) if new else []
        self._start_writing_back(
            job, has_deliveries=any(d.kind is DeliveryKind.RESULT for d in made)
        )
        for d in made:
            self._wake_up(d.target)
        log.info(
            "write-back scheduled",
            targets=[d.target for d in made if d.kind is DeliveryKind.RESULT],
            notifications=[d.target for d in made if d.kind is not DeliveryKind.RESULT],
            urgent=result.urgent,
        )
        return made

    def _new(
        self, result: Result, job: Job, spec: TargetSpec, kind: DeliveryKind, event: str
    ) -> NewDelivery:
        return NewDelivery(
            study_uid=result.study_uid,
            target=spec.name,
            target_type=spec.type,
            kind=kind,
            max_attempts=spec.max_attempts,
            result_id=result.id,
            job_id=job.id,
            event=event,
            urgent=result.urgent,
        )

    def _start_writing_back(self, job: Job, *, has_deliveries: bool) -> None:
        now = self.clock()
        try:
            if job.state is JobState.RESULT_RECEIVED:
                path = [JobState.WRITING_BACK]
                if not has_deliveries and not self.deliveries.for_job(job.id):
                    path.append(JobState.DONE)
                self.jobs.finish(job.id, path, now=now)
        except JobStateError as exc:  # cancelled meanwhile, or another process moved it
            LOG.warning("job changed before write-back", job_id=job.id, error=str(exc))
        self.settle(job.id)

    def settle(self, job_id: int) -> Job | None:
        """Move a writing-back job to done (every write-back done) or dead (one dead)."""
        try:
            job = self.jobs.get(job_id)
        except NotFoundError:
            return None
        if job.state is not JobState.WRITING_BACK:
            return job
        mine = self.deliveries.for_job(job_id)
        dead = [d for d in mine if d.state is DeliveryState.DEAD]
        try:
            if dead:
                reasons = "; ".join(f"{d.target}: {d.last_error}" for d in dead)
                job = self.jobs.finish(
                    job_id, JobState.DEAD, error=f"write-back dead: {reasons}", now=self.clock()
                )
                LOG.error("write-back dead; job is dead", job_id=job_id, reasons=reasons)
            elif all(d.state is DeliveryState.DONE for d in mine):
                job = self.jobs.finish(job_id, JobState.DONE, now=self.clock())
                LOG.info("written back; job is done", job_id=job_id, targets=len(mine))
        except JobStateError as exc:
            LOG.warning("job changed while it was settled", job_id=job_id, error=str(exc))
        return job

    # ---------------------------------------------------------------- one delivery

    def _item(self, d: Delivery) -> WritebackItem:
        job = self.jobs.get(d.job_id) if d.job_id is not None else None
        result = self.results(d.result_id) if d.result_id is not None else None
        study: Study | None
        try:
            study = self.studies.get_study(d.study_uid)
        except NotFoundError:
            study = None
        order: StoredOrder | None = None
        if d.kind is not DeliveryKind.NOTIFY or d.result_id is not None:
            link = self.orders.link(d.study_uid)
            if link is not None and link.state is LinkState.LINKED:
                order = self.orders.get(link.order_id)
        return WritebackItem(
            delivery=d,
            job=job,
            result=result,
            study=study,
            order=order,
            route=job.route if job else None,
        )

    def handle(self, d: Delivery) -> Delivery:
        """Run one claimed attempt and record its outcome; settle the job after."""
        with self.plans.use() as plan:
            return self._attempt(d, plan)

    def _attempt(self, d: Delivery, plan: Plan) -> Delivery:
        log = LOG.bind(
            delivery_id=d.id,
            target=d.target,
            kind=d.kind.value,
            attempt=d.attempts,
            job_id=d.job_id,
            snapshot=plan.id,
        )
        spec = plan.target(d.target)
        if spec is None:
            error = f"write-back target '{d.target}' is no longer configured"
            done = self.deliveries.finish(d.id, DeliveryState.DEAD, error=error, now=self.clock())
            log.error("write-back failed; delivery is dead (target not configured)")
            if d.job_id is not None and d.kind is DeliveryKind.RESULT:
                self.settle(d.job_id)
            return done
        target = plan.writer(d.target)
        try:
            item = self._item(d)
            detail = target.deliver(item)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            retry = is_retryable(target, exc) and not d.exhausted
            if retry:
                wait = backoff(d.attempts, spec.backoff_base, spec.backoff_cap, self.jitter)
                at = self.clock() + timedelta(seconds=wait)
                done = self.deliveries.finish(
                    d.id, DeliveryState.FAILED, error=error, next_attempt_at=at, now=self.clock()
                )
                log.warning("write-back failed; will retry", error=error, retry_in=round(wait, 3))
            else:
                done = self.deliveries.finish(
                    d.id, DeliveryState.DEAD, error=error, now=self.clock()
                )
                reason = "attempts exhausted" if d.exhausted else "not retryable"
                log.error(f"write-back failed; delivery is dead ({reason})", error=error)
        else:
            done = self.deliveries.finish(d.id, DeliveryState.DONE, detail=detail, now=self.clock())
            log.info("written back", detail=detail)
            completed = item.result.completed_at if item.result is not None else None
            if d.kind is DeliveryKind.RESULT and completed is not None:
                observe_writeback(d.target, (done.updated_at - completed).total_seconds())
        if (
            d.job_id is not None
            and d.kind is DeliveryKind.RESULT
            and done.state is not DeliveryState.FAILED
        ):
            self.settle(d.job_id)
        return done

    def run_once(self, target: str) -> Delivery | None:
        """Claim and run ``target``'s next due delivery, if any (tests and the worker loop)."""
        d = self.deliveries.claim_next(target, now=self.clock())
        return None if d is None else self.handle(d)

    # ---------------------------------------------------------------- overdue jobs

    def check_overdue(self) -> list[Job]:
        """Flag jobs past their deadline without a result, once each, and notify the webhook."""
        hook = self.plans.current.target(WEBHOOK_TARGET)
        template = None
        if hook is not None:
            template = NewDelivery(
                study_uid="",
                target=hook.name,
                target_type=hook.type,
                kind=DeliveryKind.NOTIFY,
                max_attempts=hook.max_attempts,
            )
        flagged = self.deliveries.flag_overdue(notify=template, now=self.clock())
        for job, delivery in flagged:
            LOG.warning(
                "job overdue: no result by its deadline",
                job_id=job.id,
                vendor=job.vendor,
                route=job.route,
                deadline_at=job.deadline_at.isoformat() if job.deadline_at else None,
                notified=delivery is not None,
            )
        if flagged and hook is not None:
            self._wake_up(hook.name)
        return [job for job, _ in flagged]

    # ---------------------------------------------------------------- running

    def recover(self) -> None:
        """After a (re)start: interrupted deliveries fail (retried at once), stuck jobs settle."""
        for d in self.deliveries.recover_interrupted(now=self.clock()):
            LOG.warning(
                "delivery was interrupted while sending",
                delivery_id=d.id,
                target=d.target,
                state=d.state.value,
            )
        for job in self.jobs.list(state=JobState.WRITING_BACK, limit=1_000_000):
            self.settle(job.id)

    def _worker(self, name: str, wake: threading.Event) -> None:
        while not self._stop.is_set() and name in self.plans.current.target_names:
            try:
                if self.run_once(name) is not None:
                    continue
                wait = self.poll_seconds
                due = self.deliveries.next_due(name, now=self.clock())
                if due is not None:
                    wait = min(wait, max((due - self.clock()).total_seconds(), 0.005))
            except (StoreError, RadbridgeError) as exc:
                LOG.error("write-back worker cannot read the store", target=name, error=str(exc))
                wait = self.poll_seconds
            except Exception:  # a worker outlives any one bad delivery
                LOG.exception("write-back worker failed", target=name)
                wait = self.poll_seconds
            wake.wait(wait)
            wake.clear()
        with self._lock:
            if self._workers.get(name) is threading.current_thread():
                del self._workers[name]
                self._wake.pop(name, None)

    def _overdue(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_overdue()
            except Exception:
                LOG.exception("overdue check failed")
            self._stop.wait(self.plans.current.overdue_check_seconds)

    def start(self) -> WritebackStage:
        """Recover, then run a worker thread per target and the overdue watcher."""
        self._stop.clear()
        self.recover()
        self._start_workers()
        watcher = threading.Thread(target=self._overdue, name="writeback-overdue", daemon=True)
        watcher.start()
        self._threads.append(watcher)
        return self

    def _start_workers(self) -> None:
        """A worker thread for every target of the plan in force that has none yet."""
        if self._stop.is_set():
            return
        for name in sorted(self.plans.current.target_names):
            with self._lock:
                if name in self._workers:
                    continue
                wake = self._wake[name] = threading.Event()
                thread = threading.Thread(
                    target=self._worker, args=(name, wake), name=f"writeback-{name}", daemon=True
                )
                self._workers[name] = thread
                self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers (an attempt in progress finishes first); the targets' connections
        belong to the plans and are closed with them."""
        self._stop.set()
        with self._lock:
            wakes = list(self._wake.values())
            threads = list(self._threads)
        for wake in wakes:
            wake.set()
        for thread in threads:
            thread.join(timeout)
        self._threads.clear()
