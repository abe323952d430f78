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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from broker.engine.metrics import observe_writeback
from broker.model.domain import LinkState, Result, StoredOrder, Study
from broker.model.errors import NotFoundError, RadbridgeError, StoreError
from broker.model.jobs import Job, JobState, JobStateError, backoff
from broker.model.logging import get_logger
from broker.model.plugins import registered
from broker.model.writeback import (
    WEBHOOK_TARGET,
    Delivery,
    DeliveryKind,
    DeliveryState,
    TargetSpec,
    WritebackItem,
    WritebackTarget,
    is_retryable,
)
from broker.store import StudyStore
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.jobs import JobStore
from broker.store.orders import OrderStore
from config.schema import Settings

LOG = get_logger("radbridge.writeback")
POLL_SECONDS = 1.0

Clock = Callable[[], datetime]
ResultLoader = Callable[[int], Result]


def utc_now() -> datetime:
    return datetime.now(UTC)


def target_specs(settings: Settings) -> dict[str, TargetSpec]:
    """Every configured target, and the notification webhook as a target of its own."""
    base = settings.delivery.backoff_base_seconds
    cap = settings.delivery.backoff_cap_seconds
    specs = {
        name: TargetSpec(name, t.type.value, t.params(), t.retries, base, cap)
        for name, t in settings.targets.items()
    }
    hook = settings.notifications.webhook
    if hook is not None:
        params: dict[str, Any] = {"url": hook.url, "timeout": hook.timeout}
        if hook.token is not None:
            params["token"] = hook.token
        specs[WEBHOOK_TARGET] = TargetSpec(
            WEBHOOK_TARGET, "webhook", params, hook.retries, base, cap
        )
    return specs


def build_targets(specs: Mapping[str, TargetSpec]) -> dict[str, WritebackTarget]:
    """One target per spec, from the registry the adapters declare (``writeback_targets``)."""
    target_for: Callable[[str], Any] = registered("writeback_targets")
    return {name: target_for(s.type).from_params(name, s.params) for name, s in specs.items()}


class WritebackStage:
    """Schedules deliveries of completed results and runs a worker per target."""

    def __init__(
        self,
        engine: Engine,
        specs: Mapping[str, TargetSpec],
        targets: Mapping[str, WritebackTarget],
        *,
        routes: Mapping[str, tuple[str, ...]],
        results: ResultLoader,
        ris_status: str | None = None,
        overdue_seconds: float = 5.0,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        missing = sorted(set(specs) - set(targets))
        if missing:
            raise RadbridgeError(f"no write-back target built for {', '.join(missing)}")
        self.engine = engine
        self.deliveries = DeliveryStore(engine)
        self.jobs = JobStore(engine)
        self.studies = StudyStore(engine)
        self.orders = OrderStore(engine)
        self.specs = dict(specs)
        self.targets = dict(targets)
        self.routes = dict(routes)
        self.ris_status = ris_status
        self.overdue_seconds = overdue_seconds
        self.results = results
        """``ResultStore.get``: a result with its objects and findings, by id."""
        self.clock = clock
        self.jitter = jitter
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in self.specs}
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- scheduling

    def schedule(self, result_id: int) -> list[Delivery]:
        """The ``on_complete`` hook: make the result's deliveries and move its job on."""
        result = self.results(result_id)
        log = LOG.bind(result_id=result_id, job_id=result.job_id)
        if result.job_id is None:
            log.warning("orphan result not written back (it matches no job)")
            return []
        job = self.jobs.get(result.job_id)
        wanted = self.routes.get(job.route)
        if wanted is None:
            log.warning(
                "the job's route is no longer configured; not written back", route=job.route
            )
            wanted = ()
        new: list[NewDelivery] = []
        for name in wanted:
            spec = self.specs.get(name)
            if spec is None:
                log.error("write-back target is not configured; skipped", target=name)
                continue
            new.append(self._new(result, job, spec, DeliveryKind.RESULT, "result"))
        if result.urgent:
            hook = self.specs.get(WEBHOOK_TARGET)
            if hook is not None:
                new.append(self._new(result, job, hook, DeliveryKind.NOTIFY, "urgent_result"))
            ris = self.specs.get(self.ris_status) if self.ris_status else None
            if ris is not None:
                new.append(self._new(result, job, ris, DeliveryKind.STATUS, "urgent_result"))
        made = self.deliveries.create(new, now=self.clock()) if new else []
        self._start_writing_back(
            job, has_deliveries=any(d.kind is DeliveryKind.RESULT for d in made)
        )
        for d in made:
            self._wake[d.target].set()
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
        target = self.targets[d.target]
        spec = self.specs[d.target]
        log = LOG.bind(
            delivery_id=d.id,
            target=d.target,
            kind=d.kind.value,
            attempt=d.attempts,
            job_id=d.job_id,
        )
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
        hook = self.specs.get(WEBHOOK_TARGET)
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
            self._wake[hook.name].set()
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

    def _worker(self, name: str) -> None:
        wake = self._wake[name]
        while not self._stop.is_set():
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

    def _overdue(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_overdue()
            except Exception:
                LOG.exception("overdue check failed")
            self._stop.wait(self.overdue_seconds)

    def start(self) -> WritebackStage:
        """Recover, then run a worker thread per target and the overdue watcher."""
        self._stop.clear()
        self.recover()
        for name in self.specs:
            thread = threading.Thread(
                target=self._worker, args=(name,), name=f"writeback-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        watcher = threading.Thread(target=self._overdue, name="writeback-overdue", daemon=True)
        watcher.start()
        self._threads.append(watcher)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers (an attempt in progress finishes first) and close the targets."""
        self._stop.set()
        for wake in self._wake.values():
            wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        for target in self.targets.values():
            try:
                target.close()
            except Exception:
                LOG.exception("write-back target did not close cleanly")


def make_writeback(
    settings: Settings, engine: Engine, results: ResultLoader, **kwargs: Any
) -> WritebackStage:
    """The write-back stage of the configured targets, routes and notifications;
    ``results`` loads a result by id (``ResultStore.get``)."""
    specs = target_specs(settings)
    status = settings.notifications.ris_status
    return WritebackStage(
        engine,
        specs,
        build_targets(specs),
        routes={route.name: tuple(route.write_back) for route in settings.routes},
        results=results,
        ris_status=status.target if status is not None else None,
        overdue_seconds=settings.notifications.overdue_check_seconds,
        **kwargs,
    )
