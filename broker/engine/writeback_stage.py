"""The write-back stage: completed results become deliveries, sent by the job engine.

* :meth:`WritebackStage.schedule` is the results' ``on_complete`` hook. It makes
  one delivery per target of the job's route (``write_back``), plus, for an
  urgent result, the notifications (webhook, RIS order status), all in one
  transaction and idempotent (a result announced twice gets its deliveries
  once); then the job goes ``result_received → writing_back`` (``→ done`` at
  once when the route writes back nowhere).
* Each target is a lane of the job engine (:class:`broker.engine.work.WorkEngine`)
  with a capacity of one: its deliveries are claimed from the store, urgent
  first, then oldest, under a lease, one attempt at a time over every process.
  A target that is down only delays its own deliveries: their failures wait
  out their backoff (``delivery.backoff_*_seconds``, like vendor jobs) while
  every other target carries on. After the target's ``retries`` the delivery
  is ``dead``; ``radbridge deliveries retry ID`` starts it over.
* Several products on one study (:class:`Reconciler`): a result that makes its
  study discordant also notifies the webhook (``flag``, once per disagreement: the
  delivery is the newest disagreeing result's, whichever result completes it); a
  route with ``reconcile: combined`` writes one combined answer once every
  live product of the route answered (or gave up, or passed the route's
  deadline), carried by the job whose result completed it; the others are
  ``done`` with it. Until then a result waits in ``result_received``; its
  notifications (urgent, discordant) do not wait.
* A canary's result (:mod:`broker.model.canary`) gets no delivery and no notification:
  its job is ``done`` at once.
* A shadow job's result (:mod:`broker.model.mode`) gets no delivery and no
  notification: it stays in the store and the job is ``done`` at once. So does the
  result of a job whose images a Rejection Note rejected after the job was made.
* When every write-back delivery of a job is done the job is ``done``; when
  one is dead the job is ``dead`` with the reason. Notifications do not decide
  the job.
* A ``correction`` delivery (:mod:`broker.model.correction`) is carried out by its
  target's ``correct``; a target type that has none makes it dead with the reason.
* :meth:`WritebackStage.sweep` and :meth:`WritebackStage.overdue` are the
  engine timer's tasks for deliveries: lapsed leases, due retries, released
  deliveries; jobs that have no result by their route's deadline are flagged
  once each and notified to the webhook.

The store is the source of truth: a restart takes over deliveries interrupted
in ``sending`` (``failed``, retried at once; the attempt counts) and settles
jobs whose deliveries all finished; results completed but not yet scheduled
are announced again by the results timer.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from structlog.stdlib import BoundLogger

from broker.engine.critical import CriticalDesk
from broker.engine.metrics import observe_writeback
from broker.engine.plan import Plan, Plans
from broker.engine.timer import Sweep
from broker.engine.work import POLL_SECONDS, Failure, Outcome, Success, WorkEngine, utc_now
from broker.model.canary import CANARY_ROUTE
from broker.model.completion import procedure_step_notice
from broker.model.critical import CRITICAL_EVENT
from broker.model.domain import LinkState, Result, StoredOrder, Study
from broker.model.errors import NotFoundError
from broker.model.jobs import Job, JobState, JobStateError
from broker.model.logging import get_logger
from broker.model.mode import effective_shadow
from broker.model.reconciliation import ReconcileMode, ReconcilePolicy, StudyFindings
from broker.model.target import correct, is_retryable
from broker.model.writeback import (
    WEBHOOK_TARGET,
    ChargeLine,
    Delivery,
    DeliveryKind,
    DeliveryState,
    TargetSpec,
    WritebackItem,
)
from broker.store import StudyStore
from broker.store.alerts import AlertStore
from broker.store.corrections import CorrectionStore
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.jobs import JobStore
from broker.store.notices import NoticeStore
from broker.store.orders import OrderStore
from broker.store.results import ResultStore
from broker.store.usage import UsageStore
from broker.store.work import LEASE_SECONDS

LOG = get_logger("radbridge.writeback")

Clock = Callable[[], datetime]
ResultLoader = Callable[[int], Result]
#: Job states whose result is in: a combined route's product has answered.
ANSWERED: frozenset[JobState] = frozenset(
    {JobState.RESULT_RECEIVED, JobState.WRITING_BACK, JobState.DONE}
)
#: Job states that will never bring a result without an operator.
GIVEN_UP: frozenset[JobState] = frozenset({JobState.DEAD, JobState.CANCELLED})


def discordance_note(findings: StudyFindings) -> str:
    """What the RIS is told of a study's disagreements (``discordance.oru_note``)."""
    parts = [
        f"{d.code.meaning}: {d.vendors[0]} and {d.vendors[1]} disagree ({d.reason})"
        for d in findings.discordances
    ]
    return "Discordant AI findings, review both: " + "; ".join(parts)


class Reconciler(Protocol):
    """What the stage asks about several products of one study (the service's
    :class:`broker.runtime.findings.Reconciliation`)."""

    def policy(self, route: str) -> ReconcilePolicy:
        """The route's ``owners``, ``reconcile`` and ``discordance`` settings in force."""
        ...

    def findings(self, study_uid: str) -> StudyFindings:
        """The study's reconciled findings (every product, provenance, flags)."""
        ...

    def combined(self, result: Result, route: str, view: StudyFindings) -> Result:
        """The route's combined answer, completed by ``result``: a result (same id) with
        every live product's findings and the combined SR, made the same on every call."""
        ...


class WritebackStage:
    """Schedules deliveries of completed results; the targets' lanes on the job engine."""

    noun = "delivery"
    verb = "write-back"

    def __init__(
        self,
        engine: Engine,
        plans: Plans,
        *,
        results: ResultLoader,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        poll_seconds: float = POLL_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
        worker: str | None = None,
        reconciler: Reconciler | None = None,
        rendered: Path | None = None,
    ) -> None:
        self.engine = engine
        self.rendered = rendered
        """The spool's ``rendered`` folder (renderings kept per result for their retries);
        None: each attempt renders in a temporary folder."""
        self.reconciler = reconciler
        """Several products on one study: owners, combined answers, disagreements."""
        self.plans = plans
        self.deliveries = DeliveryStore(engine)
        self.jobs = JobStore(engine)
        self.studies = StudyStore(engine)
        self.orders = OrderStore(engine)
        self.results = results
        """``ResultStore.get``: a result with its objects and findings, by id."""
        self.result_store = ResultStore(engine)
        self.corrections = CorrectionStore(engine)
        self.alerts = AlertStore(engine)
        self.clock = clock
        self.lanes_engine = WorkEngine(
            self,
            plans,
            worker=worker,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            clock=clock,
            jitter=jitter,
        )
        self._sweep = Sweep(
            self.deliveries,
            self._wake_item,
            self._taken_over,
            snapshot=lambda: self.plans.current.id,
        )
        self._overdue_at: datetime | None = None
        self.critical = CriticalDesk(engine, plans, wake=self.lanes_engine.wake, clock=clock)
        """Critical-result cases: opened here for urgent results; its ``tick`` is a timer task."""

    @property
    def store(self) -> DeliveryStore:
        return self.deliveries

    # ---------------------------------------------------------------- scheduling

    def schedule(self, result_id: int) -> list[Delivery]:
        """The ``on_complete`` hook: make the result's deliveries and move its job on."""
        result = self.results(result_id)
        log = LOG.bind(result_id=result_id, job_id=result.job_id)
        if result.job_id is None:
            log.warning("orphan result not written back (it matches no job)")
            return []
        job = self.jobs.get(result.job_id)
        joined: list[Job] = []
        event = "result"
        if job.route == CANARY_ROUTE:
            log.info("canary result kept, not written back", vendor=job.vendor)
            self._start_writing_back(job, has_deliveries=False)
            return []
        with self.plans.use() as plan:
            log = log.bind(snapshot=plan.id)
            shadow = effective_shadow(job.shadow, plan.shadow(job.route, job.vendor))
            if shadow is not None:
                log.info("shadow result kept, not written back", why=shadow.value)
                self._start_writing_back(job, has_deliveries=False)
                return []
            rejected = self.corrections.rejected_before(job)
            if rejected is not None:
                log.warning(
                    "result not written back: made from images rejected since",
                    correction_id=rejected.id,
                    reason=f"{rejected.reason.system}:{rejected.reason.value}",
                )
                self._start_writing_back(job, has_deliveries=False)
                return []
            waiting = False
            policy = self.reconciler.policy(job.route) if self.reconciler else None
            if policy is not None and policy.mode is ReconcileMode.COMBINED:
                combined = self._combine(job, plan, log)
                waiting = combined is None
                event, joined = "combined", combined or []
            wanted = plan.write_back(job.route)
            if wanted is None:
                log.warning(
                    "the job's route is no longer configured; not written back", route=job.route
                )
                wanted = ()
            new: list[NewDelivery] = []
            site = self.studies.site_of(job.study_uid) if plan.sites else None
            for name in () if waiting else wanted:
                resolved = plan.sites.target_for(name, site)
                if resolved is None:
                    log.warning(
                        "the study's site has no such target; skipped", target=name, site=site
                    )
                    continue
                spec = plan.target(resolved)
                if spec is None:
                    log.error("write-back target is not configured; skipped", target=resolved)
                    continue
                new.append(self._new(result, job, spec, DeliveryKind.RESULT, event))
            hook = plan.target(WEBHOOK_TARGET)
            if result.urgent:
                if hook is not None:
                    new.append(self._new(result, job, hook, DeliveryKind.NOTIFY, "urgent_result"))
                ris = plan.target(plan.ris_status) if plan.ris_status else None
                if ris is not None:
                    new.append(self._new(result, job, ris, DeliveryKind.STATUS, "urgent_result"))
            newest = self._discordance(result, log)
            if hook is not None and newest is not None:
                its_job = job if newest.job_id in (None, job.id) else self.jobs.get(newest.job_id)
                new.append(self._new(newest, its_job, hook, DeliveryKind.FLAG, "discordant"))
            made = self.deliveries.create(new, now=self.clock()) if new else []
            if result.urgent:
                self.critical.open(result, job, plan, linked=made)
        for d in made:
            self.lanes_engine.wake(d.target)
        if waiting:  # the notifications go now; the combined answer when the others are in
            return made
        self._start_writing_back(
            job, has_deliveries=any(d.kind is DeliveryKind.RESULT for d in made)
        )
        for other in joined:
            self._start_writing_back(other, has_deliveries=False)
        log.info(
            "write-back scheduled",
            targets=[d.target for d in made if d.kind is DeliveryKind.RESULT],
            notifications=[d.target for d in made if d.kind is not DeliveryKind.RESULT],
            urgent=result.urgent,
            combined=[j.id for j in joined] if event == "combined" else None,
        )
        return made

    def order_status(self, study_uid: str, event: str) -> Delivery | None:
        """An order-status update to the RIS (``notifications.ris_status``) for the study:
        a modality's procedure step (``event`` from
        :func:`broker.model.completion.procedure_step_event`); None when not configured."""
        with self.plans.use() as plan:
            name = plan.ris_status
            spec = plan.target(name) if name else None
            if spec is None or not plan.procedure_steps_to_ris:
                return None
            new = NewDelivery(
                study_uid=study_uid,
                target=spec.name,
                target_type=spec.type,
                kind=DeliveryKind.STATUS,
                max_attempts=spec.max_attempts,
                event=event,
            )
        [made] = self.deliveries.create([new], now=self.clock())
        self.lanes_engine.wake(made.target)
        LOG.info("procedure step to the RIS scheduled", delivery_id=made.id, step=event)
        return made

    def _discordance(self, result: Result, log: BoundLogger) -> Result | None:
        """When ``result`` disagrees with another product's (logged, no patient data), the
        newest result of that disagreement: the study's ``flag`` notification is that
        result's, so two results that complete together notify once, not once each."""
        if self.reconciler is None:
            return None
        found = self.reconciler.findings(result.study_uid).involving(result.id)
        for d in found:
            log.warning(
                "discordant AI findings",
                code=f"{d.code.system}:{d.code.value}",
                vendors=list(d.vendors),
                result_ids=list(d.result_ids),
                why=d.reason,
            )
        if not found:
            return None
        newest = max(rid for d in found for rid in d.result_ids)
        return result if newest == result.id else self.results(newest)

    def _combine(
        self, job: Job, plan: Plan, log: BoundLogger, *, quiet: bool = False
    ) -> list[Job] | None:
        """The route's other live jobs of the study, answered, that join this job's combined
        answer; None while one is still to answer (the job waits in ``result_received``)
        or when another job carries the combined answer already (this one is done)."""
        siblings = [
            j
            for j in self.jobs.list(study_uid=job.study_uid)
            if j.id != job.id
            and j.route == job.route
            and effective_shadow(j.shadow, plan.shadow(j.route, j.vendor)) is None
        ]
        for other in siblings:
            if any(d.event == "combined" for d in self.deliveries.for_job(other.id)):
                log.info("the route's combined answer is written already", job_id=other.id)
                self._start_writing_back(job, has_deliveries=False)
                return None
        now = self.clock()
        waiting = [
            j
            for j in siblings
            if j.state not in ANSWERED
            and j.state not in GIVEN_UP
            and (j.deadline_at is None or j.deadline_at > now)
        ]
        if waiting:
            if not quiet:
                log.info(
                    "combined answer waits for the route's other products",
                    waiting=[j.vendor for j in waiting],
                )
            return None
        return [j for j in siblings if j.state is JobState.RESULT_RECEIVED]

    def combine_waiting(self) -> int:
        """Schedule again the results of combined routes that wait for other products (a
        product that gave up, or passed its deadline, no longer holds the answer back);
        how many were written."""
        if self.reconciler is None:
            return 0
        done = 0
        for job in self.jobs.list(state=JobState.RESULT_RECEIVED, limit=1000):
            if self.reconciler.policy(job.route).mode is not ReconcileMode.COMBINED:
                continue
            with self.plans.use() as plan:
                if self._combine(job, plan, LOG.bind(job_id=job.id), quiet=True) is None:
                    continue
            results = [r for r in self.result_store.for_job(job.id) if r.completed_at]
            if results and self.schedule(results[-1].id):
                done += 1
        return done

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

    # ---------------------------------------------------------------- the engine's Work

    def lanes(self, plan: Plan) -> Mapping[str, int]:
        """A lane per target (the notification webhook included), one attempt at a time."""
        return dict.fromkeys(plan.target_names, 1)

    def bind(self, item: Delivery, log: BoundLogger) -> BoundLogger:
        return log.bind(
            delivery_id=item.id, target=item.target, kind=item.kind.value, job_id=item.job_id
        )

    def _item(self, d: Delivery, plan: Plan | None = None) -> WritebackItem:
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
        step = procedure_step_notice(d.event) if d.kind is DeliveryKind.STATUS else None
        if order is None and step is not None:  # a step can come before its study's images
            order_id = NoticeStore(self.engine).order_of(step)
            order = self.orders.get(order_id) if order_id is not None else None
        links: dict[int, dict[str, str]] = {}
        signer = plan.verdict_links if plan is not None else None
        if d.kind is DeliveryKind.NOTIFY and result is not None and signer is not None:
            count = len(result.findings.findings) if result.findings else 0
            # signed as of the notification's making: every retry carries the same body
            links = signer.for_result(result.id, count, d.created_at)
        findings, note = None, None
        if self.reconciler is not None and result is not None and job is not None:
            note_wanted = d.target_type == "hl7" and self.reconciler.policy(job.route).oru_note
            if d.event == "combined" or d.kind is DeliveryKind.FLAG or note_wanted:
                findings = self.reconciler.findings(d.study_uid)  # only where it is used
            if findings is not None and d.event == "combined":
                result = self.reconciler.combined(result, job.route, findings)
            if findings is not None and note_wanted and findings.discordant:
                note = discordance_note(findings)
        charge = self._charge(job) if d.kind is DeliveryKind.CHARGE else None
        alert = None
        if d.kind is DeliveryKind.NOTIFY and d.result_id is None and d.job_id is None:
            alert = self.alerts.for_delivery(d.id)
        # a combined answer names each finding's own product (provenance) instead
        vendor = job.vendor if job is not None and d.event != "combined" else None
        correction, original = None, None
        if d.kind is DeliveryKind.CORRECTION and d.correction_id is not None:
            correction = self.corrections.get(d.correction_id)
            original = self.deliveries.original(d)
        return WritebackItem(
            delivery=d,
            job=job,
            result=result,
            study=study,
            order=order,
            route=job.route if job else None,
            verdict_links=links,
            regulatory=plan.regulatory(vendor) if plan is not None and vendor else None,
            charge=charge,
            sources=functools.partial(self._sources, job),
            notice=self.critical.notice(d, plan)
            if d.event == CRITICAL_EVENT and plan is not None
            else None,
            findings=findings,
            note=note,
            correction=correction,
            original=original,
            alert=alert,
            # a combined answer is made for each attempt: its renderings too
            renderings=self.rendered / str(d.result_id)
            if self.rendered is not None and d.result_id is not None and d.event != "combined"
            else None,
        )

    def _charge(self, job: Job | None) -> ChargeLine | None:
        """The usage row a ``charge`` delivery charges to the HIS, with its contract's terms."""
        entry = UsageStore(self.engine).get(job.id) if job is not None else None
        if entry is None:
            return None
        return ChargeLine(
            job_id=entry.job_id,
            day=entry.day,
            vendor=entry.vendor,
            product=entry.product,
            contract=entry.contract,
            unit=entry.unit,
            quantity=entry.quantity,
            price=entry.price,
            currency=entry.currency,
            payer=entry.payer,
            price_code=entry.price_code,
            province=entry.province,
        )

    def _sources(self, job: Job | None) -> Sequence[str]:
        """Spool paths of the images ``job`` sent (its series, or the whole study)."""
        if job is None:
            return ()
        return self.studies.instance_paths(job.study_uid, job.series_uids)

    def attempt(self, item: Delivery, plan: Plan, log: BoundLogger) -> Outcome:
        """Write one delivery with the target of ``plan``."""
        spec = plan.target(item.target)
        if spec is None:
            error = f"write-back target '{item.target}' is no longer configured"
            return Failure(error, retryable=False, why="target not configured")
        target = plan.writer(item.target)
        if item.kind is DeliveryKind.CORRECTION:
            waiting = self._before_correction(item, spec)
            if waiting is not None:
                return waiting
        try:
            if item.kind is DeliveryKind.CORRECTION:
                detail = correct(target, self._item(item, plan))
            else:
                detail = target.deliver(self._item(item, plan))
        except Exception as exc:
            return Failure(
                f"{type(exc).__name__}: {exc}",
                retryable=is_retryable(target, exc),
                backoff_base=spec.backoff_base,
                backoff_cap=spec.backoff_cap,
            )
        return Success((DeliveryState.DONE,), values={"detail": detail}, detail=detail)

    def _before_correction(self, item: Delivery, spec: TargetSpec) -> Outcome | None:
        """A correction goes after what it corrects: it waits (retried with the target's
        backoff) while the result delivery is unfinished, and has nothing to do when that
        one is dead (nothing reached the target). None: go ahead."""
        original = self.deliveries.original(item)
        if original is None or original.state is DeliveryState.DONE:
            return None
        if original.state is DeliveryState.DEAD:
            detail = f"nothing to correct: result delivery {original.id} never reached the target"
            return Success((DeliveryState.DONE,), values={"detail": detail}, detail=detail)
        return Failure(
            f"waits for result delivery {original.id} ({original.state.value}) to finish first",
            retryable=True,
            backoff_base=spec.backoff_base,
            backoff_cap=spec.backoff_cap,
        )

    def after(
        self, item: Delivery, done: Delivery, outcome: Outcome, plan: Plan, log: BoundLogger
    ) -> None:
        if isinstance(outcome, Success):
            log.info("written back", detail=outcome.detail)
            if item.kind is DeliveryKind.RESULT and item.result_id is not None:
                completed = self.results(item.result_id).completed_at
                if completed is not None:
                    observe_writeback(item.target, (done.updated_at - completed).total_seconds())
        if (
            item.job_id is not None
            and item.kind is DeliveryKind.RESULT
            and done.state is not DeliveryState.FAILED
        ):
            self.settle(item.job_id)
        if item.kind is not DeliveryKind.RESULT and done.state is not DeliveryState.FAILED:
            self.critical.delivered(done)  # a notification listed in a critical case's ledger

    def closed_until(self, lane: str, plan: Plan, now: datetime) -> datetime | None:
        """Targets are always open."""
        return None

    def freed(self, lane: str) -> None:
        """A write-back ended: look at the target's next delivery."""
        self.lanes_engine.wake(lane)

    def handle(self, d: Delivery) -> Delivery | None:
        """Run one claimed attempt and record its outcome; settle the job after."""
        with self.plans.use() as plan:
            return self.lanes_engine.handle(d, plan)

    def run_once(self, target: str) -> Delivery | None:
        """Requeue ``target``'s due retries, then claim and run its next delivery, if any
        (tests, and one-off runs; the running service has the engine's lanes)."""
        self.deliveries.requeue_due(self.clock(), lane=target, snapshot=self.plans.current.id)
        d = self.lanes_engine.claim(target)
        return None if d is None else self.handle(d)

    # ---------------------------------------------------------------- the timer's tasks

    def _wake_item(self, d: Delivery) -> None:
        self.lanes_engine.wake(d.target)

    def _taken_over(self, d: Delivery) -> None:
        if d.job_id is not None and d.kind is DeliveryKind.RESULT:
            self.settle(d.job_id)

    def sweep(self, now: datetime) -> datetime | None:
        """The timer's task for deliveries: lapsed leases, due retries, released deliveries."""
        return self._sweep(now)

    def overdue(self, now: datetime) -> datetime | None:
        """The timer's task for overdue jobs: checked at the next job's deadline, and after
        the store changed, every ``overdue_check_seconds`` at most."""
        if self._overdue_at is not None and now < self._overdue_at:
            return self._overdue_at  # woken sooner: look once the interval has passed
        self.check_overdue()
        self.combine_waiting()
        seconds = self.plans.current.overdue_check_seconds
        self._overdue_at = now + timedelta(seconds=seconds)
        deadline = self.deliveries.next_overdue()
        return None if deadline is None else max(deadline, self._overdue_at)

    def webhook_notice(self) -> NewDelivery | None:
        """A notification to the webhook (``notifications.webhook``) to fill in, in the
        configuration in force; None when no webhook is configured."""
        hook = self.plans.current.target(WEBHOOK_TARGET)
        if hook is None:
            return None
        return NewDelivery(
            study_uid="",
            target=hook.name,
            target_type=hook.type,
            kind=DeliveryKind.NOTIFY,
            max_attempts=hook.max_attempts,
        )

    def check_overdue(self) -> list[Job]:
        """Flag jobs past their deadline without a result, once each, and notify the webhook."""
        hook = self.plans.current.target(WEBHOOK_TARGET)
        template = self.webhook_notice()
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
            self.lanes_engine.wake(hook.name)
        return [job for job, _ in flagged]

    # ---------------------------------------------------------------- running

    def recover(self) -> None:
        """After a (re)start: interrupted deliveries fail (retried at once), stuck jobs settle."""
        snapshot = self.plans.current.id
        for d in self.deliveries.recover_interrupted(snapshot=snapshot, now=self.clock()):
            LOG.warning(
                "delivery was interrupted while sending",
                delivery_id=d.id,
                target=d.target,
                state=d.state.value,
            )
        for job in self.jobs.list(state=JobState.WRITING_BACK, limit=1_000_000):
            self.settle(job.id)

    def start(self) -> WritebackStage:
        """Recover, then run the targets' lanes (the service's timer runs :meth:`sweep`)."""
        self.recover()
        self.lanes_engine.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the lanes (an attempt in progress finishes first); the targets' connections
        belong to the plans and are closed with them."""
        self.lanes_engine.stop(timeout)
