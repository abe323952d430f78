"""Vendor jobs: made from routing decisions, announced on the bus, sent by the job engine.

* :class:`Dispatcher` creates the jobs of a decision and wakes a worker for
  each; after a start it takes over interrupted claims and announces every
  pending job again; its :meth:`~Dispatcher.sweep` is the timer's task for jobs
  (lapsed leases, due retries, jobs an operator released).
* :class:`JobWorker` runs the vendors' lanes on the job engine
  (:class:`broker.engine.work.WorkEngine`): it claims a vendor's jobs from the
  store, never more at once over all workers than the vendor's concurrency,
  and sends each study with the vendor's transport. It listens on the bus for
  wake-ups; a finished send wakes a worker (any) for the vendor's next job.

The store is the source of truth and decides which job goes next (stat first,
then urgent, then oldest): a bus message only says "vendor V may have work".
A lost message is made up for by the lanes' polling; an extra one finds
nothing to claim.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from structlog.stdlib import BoundLogger

from broker.engine.bus import Bus, BusError, Ticket
from broker.engine.metrics import count_error
from broker.engine.plan import Plan, Plans
from broker.engine.timer import Sweep, Timer
from broker.engine.work import POLL_SECONDS, Failure, Outcome, Success, WorkEngine, utc_now
from broker.model.deid import Deidentify, Outbound
from broker.model.domain import Priority
from broker.model.errors import ConfigError, StoreError
from broker.model.jobs import RESENDABLE, Job, JobState
from broker.model.logging import get_logger
from broker.model.mode import ShadowCause
from broker.model.plugins import registered
from broker.model.priors import (
    FetchedPrior,
    FetchPriors,
    PriorInstance,
    PriorsFetched,
    PriorsPolicy,
    PriorsQuery,
)
from broker.model.vendor import SendOutcome, is_retryable
from broker.store import StudyStore
from broker.store.job_tokens import TOKEN_STATES
from broker.store.jobs import Created, JobStore
from broker.store.priors import PriorStore
from broker.store.pseudonyms import PseudonymStore
from broker.store.work import LEASE_SECONDS

LOG = get_logger("radbridge.jobs")
#: Seconds until jobs whose announcement failed (the bus was down) are announced again.
ANNOUNCE_AGAIN_SECONDS = 1.0

Clock = Callable[[], datetime]
#: Called after a job reached ``sent`` (job, what the send did, when); must not raise.
SentHook = Callable[[Job, SendOutcome, datetime], None]
Deidentifier = Callable[[Sequence[Path], Deidentify, str, Path], Outbound]
"""``(the job's files, profile, secret, empty folder) -> the copies to send`` (the
``deidentify_study`` entry point of ``radbridge.registries``)."""


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
    shadow: ShadowCause | None = None
    """Why the job runs as a silent trial (:mod:`broker.model.mode`); None: live."""


class Dispatcher:
    """Creates jobs and wakes workers for them; the timer's task for jobs."""

    def __init__(self, jobs: JobStore, bus: Bus, plans: Plans, *, clock: Clock = utc_now) -> None:
        self.jobs = jobs
        self.bus = bus
        self.plans = plans
        self.clock = clock
        self._unannounced: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._sweep = Sweep(jobs, self.publish, snapshot=lambda: self.plans.current.id)

    def dispatch(self, requests: Iterable[JobRequest], plan: Plan | None = None) -> list[Created]:
        """Create a job per request (an existing one is kept) and wake a worker for each new one.

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
                snapshot=plan.id,
                now=now,
                shadow=request.shadow,
            )
            if created.duplicate and request.resend and created.job.state in RESENDABLE:
                if request.study_revision > created.job.study_revision:
                    job = self.jobs.resend(
                        created.job.id,
                        study_revision=request.study_revision,
                        series_uids=request.series_uids,
                        snapshot=plan.id,
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
        """Wake a worker of the job's vendor; False if the bus failed (announced again later)."""
        try:
            self.bus.publish(job.vendor, job.id, job.attempts + 1, job.priority.bus_priority)
        except BusError as exc:
            LOG.error("cannot announce job; will try again", job_id=job.id, error=str(exc))
            with self._lock:
                self._unannounced[job.id] = job
            return False
        with self._lock:
            self._unannounced.pop(job.id, None)
        return True

    def retry(self, job_id: int) -> Job:
        """Operator: start a dead or failed job over and wake a worker for it."""
        job = self.jobs.retry(job_id, now=self.clock())
        LOG.info("job retried by the operator", job_id=job_id, vendor=job.vendor)
        self.requeue_due()
        return job

    def start(self) -> int:
        """After a (re)start: take over interrupted claims and announce every pending job.

        A job found in ``sending`` whose worker is gone (a process of this
        machine that no longer runs) or whose lease ran out was interrupted:
        its attempt counts, and it is failed (retried at once) or dead if that
        was its last attempt. A claim of a live worker elsewhere is left to
        it. Returns how many jobs were announced.
        """
        now = self.clock()
        for job in self.jobs.recover_interrupted(snapshot=self.plans.current.id, now=now):
            LOG.warning(
                "job was interrupted while sending",
                job_id=job.id,
                vendor=job.vendor,
                attempt=job.attempts,
                state=str(job.state),
            )
        announced = 0
        for job in self.jobs.list(state=JobState.PENDING, limit=1_000_000):
            announced += self.publish(job)
        return announced + len(self.requeue_due(now))

    def requeue_due(self, now: datetime | None = None) -> list[Job]:
        """Announce failed jobs whose backoff has passed, released ones, and any whose
        announcement failed."""
        with self._lock:
            retry_publish = list(self._unannounced.values())
        for job in retry_publish:
            self.publish(job)
        now = now or self.clock()
        snapshot = self.plans.current.id
        moved = self.jobs.requeue_due(now, snapshot=snapshot) + self.jobs.take_released(now)
        for job in moved:
            self.publish(job)
        return moved

    def sweep(self, now: datetime) -> datetime | None:
        """The timer's task for jobs: lapsed leases, due retries, released jobs, and jobs
        whose announcement failed; when it next has work."""
        with self._lock:
            unannounced = list(self._unannounced.values())
        for job in unannounced:
            self.publish(job)
        due = self._sweep(now)
        with self._lock:
            if not self._unannounced:
                return due
        again = now + timedelta(seconds=ANNOUNCE_AGAIN_SECONDS)  # the bus failed: soon again
        return again if due is None else min(due, again)

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """The timer loop for jobs alone until ``stop`` is set (the service runs one for all)."""
        Timer([self.sweep], clock=self.clock, interval=interval).run(stop)


class JobWork:
    """Vendor jobs as the job engine runs them: one lane per vendor, an attempt is a send."""

    noun = "job"
    verb = "send"

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        clock: Clock,
        on_sent: Sequence[SentHook],
        *,
        scratch: Path | None = None,
        priors: Path | None = None,
    ) -> None:
        self.store = JobStore(engine)
        self.studies = StudyStore(engine)
        self.bus = bus
        self.clock = clock
        self.on_sent = list(on_sent)
        self.wake_here: Callable[[str], None] = lambda _vendor: None
        self.scratch = scratch
        self.pseudonyms = PseudonymStore(engine)
        self._deidentify: Deidentifier | None = None
        self.priors_root = priors
        self.prior_store = PriorStore(engine)

    def lanes(self, plan: Plan) -> Mapping[str, int]:
        return {name: plan.vendor(name).concurrency for name in plan.vendor_names}

    def bind(self, item: Job, log: BoundLogger) -> BoundLogger:
        return log.bind(job_id=item.id, vendor=item.vendor, study_uid=item.study_uid)

    def attempt(self, item: Job, plan: Plan, log: BoundLogger) -> Outcome:
        """Send the job's study (or its series) with the vendor's transport of ``plan``."""
        try:
            spec = plan.vendor(item.vendor)
            transport = plan.transport(item.vendor)
        except ConfigError as exc:
            return Failure(str(exc), retryable=False, why="the vendor is no longer configured")
        files = [Path(p) for p in self.studies.instance_paths(item.study_uid, item.series_uids)]
        if not files:
            return Failure(
                "the study has no instances in the store", retryable=False, why="nothing to send"
            )
        pushed = getattr(transport, "pushes_files", True)
        profile = plan.deidentify(item.vendor, item.route)
        priors = self.priors(item, plan, log, pushed=pushed)
        note = priors.note
        outbound: Outbound | None = None
        copies: Outbound | None = None
        if profile is None:
            if pushed:
                files += priors.files
        else:
            found = self.deidentify(item, files, profile, plan, log)
            if isinstance(found, Failure):
                return found
            outbound = found
            files = list(outbound.files)
            if priors.files:  # the same keyed pseudonyms: the same patient's, the same one
                made = self.deidentify(item, priors.files, profile, plan, log)
                if isinstance(made, Failure):
                    note = f"sent without priors: they cannot be de-identified ({made.error})"
                else:
                    copies = made
                    files += copies.files  # pushed; a pull's manifest lists them
        log.info("sending", instances=len(files))
        try:
            sent = transport.send(item, files)
        except Exception as exc:
            # The label dashboards know: radbridge_errors_total{stage="delivery"}.
            count_error("delivery", exc)
            return Failure(
                f"{type(exc).__name__}: {exc}",
                retryable=is_retryable(transport, exc),
                backoff_base=spec.backoff_base,
                backoff_cap=spec.backoff_cap,
            )
        finally:
            for made_copies in (outbound, copies):
                if made_copies is not None and made_copies.folder is not None:
                    shutil.rmtree(made_copies.folder, ignore_errors=True)
        if outbound is not None:
            summary = outbound.summary()
            if copies is not None:
                summary["prior_instances"] = len(copies.files)
            sent = replace(sent, deidentified=summary)
        if note:
            sent = replace(sent, detail=f"{sent.detail}; {note}" if sent.detail else note)
        return Success((JobState.SENT, JobState.AWAITING_RESULT), detail=sent, note=note or None)

    def priors_folder(self, item: Job) -> Path:
        """Where the job's priors are spooled (kept between attempts, gone once sent; kept
        while a vendor that pulls by manifest has the job)."""
        return self._folder(item.id)

    def _folder(self, job_id: int) -> Path:
        root = self.priors_root or Path(tempfile.gettempdir()) / "radbridge-priors"
        return root / f"job-{job_id}"

    def priors(
        self, item: Job, plan: Plan, log: BoundLogger, *, pushed: bool = True
    ) -> PriorsFetched:
        """The prior studies the job's route sends along: fetched once per job (a retry
        sends what the first attempt fetched), within the route's ``priors.wait``, and
        recorded (:class:`~broker.store.priors.PriorStore`: the time ledger, explain). For
        a vendor that pulls by manifest (``pushed`` False) they are listed for the job's
        WADO-RS instead of sent. A vendor with ``deidentify:`` gets them de-identified as
        the current study is (the same keyed pseudonyms)."""
        policy = plan.priors(item.route)
        if policy is None:
            return PriorsFetched()
        folder = self.priors_folder(item)
        done = folder / "fetched.json"
        if done.exists():
            return _read_fetched(done)
        self._recorded(lambda: self.prior_store.requested(item, policy, self.clock()), log)
        fetched = self._fetch(item, policy, folder, log)
        log.info(
            "priors",
            source=policy.source,
            studies=len(fetched.priors),
            instances=len(fetched.files),
        )
        folder.mkdir(parents=True, exist_ok=True)
        _write_fetched(done, fetched)
        self._recorded(
            lambda: self.prior_store.done(item, fetched, self.clock(), served=not pushed), log
        )
        return fetched

    def _fetch(
        self, item: Job, policy: PriorsPolicy, folder: Path, log: BoundLogger
    ) -> PriorsFetched:
        """Ask the route's PACS (the ``priors_TYPE`` entry point); never raises."""
        try:
            query = PriorsQuery.of(self.studies.get_study(item.study_uid))
            if query is None:
                return PriorsFetched(note="sent without priors: the study has no patient ID")
            if folder.exists():
                shutil.rmtree(folder)  # half a fetch of an interrupted attempt
            folder.mkdir(parents=True)
            fetch: FetchPriors = registered(f"priors_{policy.source_type}")
            return fetch(query, policy, folder)
        except Exception as exc:  # a fetch that fails must not keep the study from its vendor
            count_error("priors", exc)
            log.exception("priors not fetched")
            return PriorsFetched(note=f"sent without priors: {type(exc).__name__}: {exc}")

    @staticmethod
    def _recorded(write: Callable[[], None], log: BoundLogger) -> None:
        """A record of the priors (ledger, explain) that cannot be written is logged: it
        must not keep the study from its vendor."""
        try:
            write()
        except StoreError:
            log.exception("priors not recorded")

    def sweep_priors(self, now: datetime) -> datetime | None:
        """The timer's task: the priors a vendor pulled go once its job left the vendor."""
        try:
            finished = self.prior_store.finished()
            for job_id in finished:
                shutil.rmtree(self._folder(job_id), ignore_errors=True)
            self.prior_store.forget(finished)
        except StoreError:
            LOG.exception("served priors not cleaned up; tried again")
        return None

    def forget_priors(self, item: Job) -> None:
        """The vendor has the priors (or the job will not be tried again): their copy goes."""
        shutil.rmtree(self.priors_folder(item), ignore_errors=True)

    def deidentify(
        self, item: Job, files: list[Path], profile: Deidentify, plan: Plan, log: BoundLogger
    ) -> Outbound | Failure:
        """The de-identified copies of the job's files, their pseudonyms recorded before
        anything is sent; or why the job cannot be sent (never retried: the same study
        fails the same way)."""
        secret = plan.pseudonym_secret
        if not secret:
            return Failure(
                "the vendor's profile needs the pseudonym secret and none is configured",
                retryable=False,
                why="cannot de-identify",
            )
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"deid-job{item.id}-", dir=self.scratch))
        try:
            if self._deidentify is None:
                self._deidentify = registered("deidentify_study")
            outbound = self._deidentify(files, profile, secret, folder)
            self.pseudonyms.record(outbound.pseudonyms, sent_with=item.study_uid)
        except Exception as exc:
            shutil.rmtree(folder, ignore_errors=True)
            count_error("delivery", exc)
            spec = plan.vendor(item.vendor)
            return Failure(
                f"{type(exc).__name__}: {exc}",
                retryable=isinstance(exc, StoreError),  # the store may be back next time
                backoff_base=spec.backoff_base,
                backoff_cap=spec.backoff_cap,
                why="cannot de-identify",
            )
        for reason in outbound.withheld:
            log.warning("image withheld from a de-identified send", reason=reason)
        log.info(
            "de-identified",
            profile=outbound.profile,
            instances=len(outbound.files),
            masked=outbound.masked,
            withheld=len(outbound.withheld),
        )
        if not outbound.files:
            shutil.rmtree(folder, ignore_errors=True)
            return Failure(
                f"nothing left to send: all {len(outbound.withheld)} images were withheld "
                f"({outbound.withheld[0] if outbound.withheld else 'no instances'})",
                retryable=False,
                why="cannot de-identify",
            )
        return outbound

    def after(self, item: Job, done: Job, outcome: Outcome, plan: Plan, log: BoundLogger) -> None:
        # a failed job is tried again with its priors; a vendor that pulls fetches them later
        if done.state is not JobState.FAILED and not (
            done.state in TOKEN_STATES and not self._pushes(plan, item.vendor)
        ):
            self.forget_priors(item)
        if not isinstance(outcome, Success) or not isinstance(outcome.detail, SendOutcome):
            return
        sent: SendOutcome = outcome.detail
        for hook in self.on_sent:  # notification hooks (usage, audit, metrics): the vendor has it
            try:
                hook(done, sent, self.clock())
            except Exception:
                log.exception("sent hook failed")
        log.info(
            "sent",
            instances=sent.instances,
            megabytes=round(sent.bytes / 1e6, 1),
            seconds=round(sent.seconds, 3),
            mb_per_s=round(sent.megabytes_per_second, 1),
        )

    @staticmethod
    def _pushes(plan: Plan, vendor: str) -> bool:
        try:
            return bool(getattr(plan.transport(vendor), "pushes_files", True))
        except ConfigError:
            return True

    def closed_until(self, lane: str, plan: Plan, now: datetime) -> datetime | None:
        """When the vendor's transport opens again (a link outside its time windows); None:
        open (or the vendor left the configuration: the claim finds that out; or its
        transport, a third party's, does not subclass VendorTransport and has no windows)."""
        try:
            transport = plan.transport(lane)
        except ConfigError:
            return None
        closed_until = getattr(transport, "closed_until", None)  # not every plugin subclasses
        return closed_until(now) if callable(closed_until) else None

    def freed(self, lane: str) -> None:
        """A send ended: wake a worker (any process) for the vendor's next job."""
        try:
            self.bus.publish(lane, 0, 0, 0)
        except BusError:
            self.wake_here(lane)


class JobWorker:
    """Sends vendor jobs: the vendors' lanes on the job engine, woken from the bus."""

    def __init__(
        self,
        engine: Engine,
        bus: Bus,
        plans: Plans,
        *,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
        on_sent: Sequence[SentHook] = (),
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        worker: str | None = None,
        scratch: Path | None = None,
        priors: Path | None = None,
    ) -> None:
        self.bus = bus
        self.plans = plans
        self.work = JobWork(engine, bus, clock, on_sent, scratch=scratch, priors=priors)
        self.engine = WorkEngine(
            self.work,
            plans,
            worker=worker,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            clock=clock,
            jitter=jitter,
        )
        self.work.wake_here = self.engine.wake
        self.jobs = self.work.store
        self._stop = threading.Event()
        self._round = threading.Event()
        self._thread: threading.Thread | None = None
        plans.on_swap(self._replan)

    @property
    def worker(self) -> str:
        """This worker's id, as claims and job histories name it."""
        return self.engine.worker

    @property
    def vendors(self) -> list[str]:
        """The vendors whose lanes this worker runs (those of the plan in force)."""
        return sorted(self.plans.current.vendor_names)

    def _prefetch(self, plan: Plan) -> dict[str, int]:
        return dict(self.work.lanes(plan))

    def _replan(self, old: Plan, new: Plan) -> None:
        """A swap listener: listen again when the vendors or their concurrency changed."""
        if self._prefetch(old) != self._prefetch(new):
            self._round.set()

    def _wake(self, ticket: Ticket) -> None:
        self.engine.wake(ticket.vendor)

    def _listen(self, ready: threading.Event) -> None:
        """Listen for every configured vendor's wake-ups until stopped (this thread)."""
        first: threading.Event | None = ready
        while not self._stop.is_set():
            self._round = threading.Event()
            if self._stop.is_set():
                break
            self.bus.consume(
                self._prefetch(self.plans.current), self._wake, self._round, ready=first
            )
            first = None

    def start(self, timeout: float = 30.0) -> JobWorker:
        """Run the lanes and listen to the bus; return once the listeners are registered."""
        ready = threading.Event()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._listen, args=(ready,), name="job-worker-bus", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise BusError(f"the job worker could not listen on {self.bus!r}")
        self.engine.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming and listening; the sends in progress finish first."""
        self._stop.set()
        self._round.set()
        self.engine.stop(30.0 if timeout is None else timeout)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def handle(self, job: Job) -> Job | None:
        """Send one job this worker claimed, under the plan in force (tests, one-off runs)."""
        with self.plans.use() as plan:
            return self.engine.handle(job, plan)

    def run_once(self, vendor: str) -> Job | None:
        """Claim and send ``vendor``'s next pending job, if any (tests, one-off runs)."""
        job = self.engine.claim(vendor)
        return None if job is None else self.handle(job)


def _write_fetched(path: Path, fetched: PriorsFetched) -> None:
    """Keep what a fetch brought for the job's next attempt."""
    priors = [
        {
            "study_uid": p.study_uid,
            "study_date": p.study_date,
            "files": [str(f) for f in p.files],
            "refused": p.refused,
            "instances": [
                [i.series_uid, i.sop_instance_uid, i.transfer_syntax_uid, str(i.path), i.size]
                for i in p.instances
            ],
        }
        for p in fetched.priors
    ]
    path.write_text(json.dumps({"priors": priors, "note": fetched.note}))


def _read_fetched(path: Path) -> PriorsFetched:
    data = json.loads(path.read_text())
    priors = tuple(
        FetchedPrior(
            p["study_uid"],
            p["study_date"],
            tuple(Path(f) for f in p["files"]),
            p["refused"],
            tuple(
                PriorInstance(series, sop, syntax, Path(path), size)
                for series, sop, syntax, path, size in p.get("instances", [])
            ),
        )
        for p in data["priors"]
    )
    return PriorsFetched(priors, data["note"])
