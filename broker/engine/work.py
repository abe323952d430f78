"""The job engine: lanes of work items claimed from the store and run one attempt at a time.

Vendor jobs (:mod:`broker.engine.dispatch`) and write-backs
(:mod:`broker.engine.writeback_stage`) run on this one engine; each supplies a
:class:`Work`: its store, its lanes with their capacity (a vendor's
concurrency; one per write-back target), and one attempt.

* A lane (``vendor:lungai``, ``target:pacs``) has a runner thread that claims
  from the store when woken (a bus wake-up, a new item in this process, a
  finished attempt, the timer's requeue, a change of the store seen by the
  service's watch: :meth:`WorkEngine.poll`) and on its own every
  ``poll_seconds``. The store decides: a claim succeeds only while the lane
  holds fewer live leases than its capacity, over every process; so a wake-up
  that finds the lane full is simply spent.
* Each attempt runs in its own thread, under one plan (the configuration in
  force when it was claimed), and ends in one recorded outcome: the success
  path, or ``failed`` with a backoff, or ``dead`` when the error is not
  retryable or the attempts are exhausted. The outcome is written only while
  this worker still holds the claim.
* One heartbeat thread renews this worker's leases while their attempts run,
  so a long send keeps its claim; a worker that dies stops renewing, and the
  timer (:mod:`broker.engine.timer`) takes its claims over once they lapse.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from structlog.stdlib import BoundLogger

from broker.engine.metrics import LANE_LOOKS
from broker.engine.plan import Plan, Plans
from broker.model.errors import RadbridgeError
from broker.model.logging import get_logger
from broker.model.work import WorkItem, WorkStateError, backoff
from broker.store.work import LEASE_SECONDS, WorkStore
from broker.store.workers import new_worker_id

LOG = get_logger("radbridge.engine")
POLL_SECONDS = 1.0

I = TypeVar("I", bound=WorkItem)  # noqa: E741 (the item type)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Success:
    """An attempt that did its work: the states the item goes through, and what to keep."""

    path: tuple[StrEnum, ...]
    values: Mapping[str, Any] = field(default_factory=dict)
    detail: Any = None
    """What the attempt returned (a send's outcome), for :meth:`Work.after`."""
    note: str | None = None
    """A line for the item's history (not an error: e.g. "sent without priors: …")."""


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that failed: why, whether a retry may help, and the backoff policy."""

    error: str
    retryable: bool
    backoff_base: float = 0.0
    backoff_cap: float = 0.0
    why: str | None = None
    """Said in the log instead of the usual reason (e.g. "target not configured")."""


Outcome = Success | Failure


class Work(Protocol[I]):
    """One kind of work item as the engine runs it."""

    @property
    def noun(self) -> str:
        """How logs name an item (``job``, ``delivery``)."""
        ...

    @property
    def verb(self) -> str:
        """How logs name an attempt (``send``, ``write-back``)."""
        ...

    @property
    def store(self) -> WorkStore[I, Any, Any]: ...

    def lanes(self, plan: Plan) -> Mapping[str, int]:
        """Every lane of this plan, with its capacity (attempts at once over all workers)."""
        ...

    def bind(self, item: I, log: BoundLogger) -> BoundLogger:
        """The log context of an item (``job_id``, ``vendor``, …)."""
        ...

    def attempt(self, item: I, plan: Plan, log: BoundLogger) -> Outcome:
        """Run one attempt; an exception is an unexpected failure (retryable)."""
        ...

    def after(self, item: I, done: I, outcome: Outcome, plan: Plan, log: BoundLogger) -> None:
        """Once the outcome is recorded (hooks, settling); must not raise."""
        ...

    def freed(self, lane: str) -> None:
        """An attempt of ``lane`` ended here: wake a worker for the lane's next item."""
        ...

    def closed_until(self, lane: str, plan: Plan, now: datetime) -> datetime | None:
        """None while ``lane`` may be claimed from; else when it may again (a link's time
        windows): its items wait, unclaimed, and count no attempt."""
        ...


class _Lane:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.credits = 0
        self.inflight = 0
        self.thread: threading.Thread | None = None
        self.closed_until: datetime | None = None


class WorkEngine(Generic[I]):
    """Runs the lanes of one :class:`Work` in this process, as one worker."""

    def __init__(
        self,
        work: Work[I],
        plans: Plans,
        *,
        worker: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        clock: Clock = utc_now,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds is {lease_seconds}; valid: more than 0")
        self.work = work
        self.plans = plans
        self.worker = worker or new_worker_id()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.jitter = jitter
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._held: dict[int, str] = {}
        self._attempts: set[threading.Thread] = set()
        self._heart: threading.Thread | None = None
        self._beat = threading.Event()
        self._running = False
        plans.on_swap(lambda _old, _new: self._sync())

    # ---------------------------------------------------------------- running

    def start(self) -> WorkEngine[I]:
        """Run a claiming thread per lane of the plan in force, and the heartbeat."""
        self._stop.clear()
        self._beat.clear()
        self._running = True
        self._heart = threading.Thread(
            target=self._heartbeat, name=f"{self.work.noun}-heartbeat", daemon=True
        )
        self._heart.start()
        self._sync()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; the attempts in progress finish first (up to ``timeout``)."""
        self._stop.set()
        self._running = False
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            with lane.cond:
                lane.cond.notify_all()
        for lane in lanes:
            if lane.thread is not None:
                lane.thread.join(timeout)
        with self._lock:
            attempts = list(self._attempts)
        for thread in attempts:
            thread.join(timeout)
        self._beat.set()
        if self._heart is not None:
            self._heart.join(timeout)
            self._heart = None

    def wake(self, lane: str, count: int = 1) -> None:
        """Let the lane try ``count`` more claims: a wake-up, spent if the lane is full.

        One that comes while every slot of the lane in this process is busy is
        dropped: the attempt that frees a slot wakes a worker itself (any
        worker, over the bus), so the next claim goes to whoever is woken,
        not always to this process.
        """
        with self._lock:
            found = self._lanes.get(lane)
        if found is None:
            return
        capacity = self._capacity(lane)
        with found.cond:
            if found.inflight < capacity:
                found.credits += count
                found.cond.notify()

    def _capacity(self, lane: str) -> int:
        return self.work.lanes(self.plans.current).get(lane, 0)

    def _sync(self) -> None:
        """A runner for every lane of the plan in force that has none yet."""
        if not self._running or self._stop.is_set():
            return
        for name in sorted(self.work.lanes(self.plans.current)):
            with self._lock:
                lane = self._lanes.get(name)
                if lane is not None and lane.thread is not None and lane.thread.is_alive():
                    continue
                lane = self._lanes[name] = _Lane(name)
                lane.credits = 1  # look at once: items may be waiting
                lane.thread = threading.Thread(
                    target=self._run_lane,
                    args=(lane,),
                    name=f"{self.work.noun}-{name}",
                    daemon=True,
                )
            lane.thread.start()

    def _run_lane(self, lane: _Lane) -> None:
        while not self._stop.is_set():
            capacity = self._capacity(lane.name)
            if capacity < 1:  # the lane left the configuration
                break
            with lane.cond:
                if lane.credits < 1 or lane.inflight >= capacity:
                    woken = lane.cond.wait(self._poll_wait(lane))
                    if not woken and lane.inflight < capacity:  # the poll: fill the lane
                        lane.credits = max(lane.credits, capacity - lane.inflight)
                claim = lane.credits > 0 and lane.inflight < capacity
                if claim:
                    lane.credits -= 1
                    lane.inflight += 1
            if claim and self._closed(lane):
                with lane.cond:
                    lane.inflight -= 1
                    lane.credits = 0
                continue
            if claim and not self._stop.is_set() and not self._spawn(lane, capacity):
                with lane.cond:
                    lane.credits = 0
        with self._lock:
            if self._lanes.get(lane.name) is lane:
                del self._lanes[lane.name]

    def poll(self) -> None:
        """Let every lane look at the store now, as at its own poll (the store changed:
        items may be waiting)."""
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            capacity = self._capacity(lane.name)
            with lane.cond:
                if lane.inflight < capacity:
                    lane.credits = max(lane.credits, capacity - lane.inflight)
                    lane.cond.notify()

    def _poll_wait(self, lane: _Lane) -> float:
        """Seconds until the lane looks on its own: ``poll_seconds``, or less when it is
        closed until sooner (a link's time window)."""
        if lane.closed_until is None:
            return self.poll_seconds
        until = (lane.closed_until - self.clock()).total_seconds()
        return min(self.poll_seconds, max(until, 0.005))

    def _closed(self, lane: _Lane) -> bool:
        """Whether the lane is closed now (its items wait); said once in the log per closing."""
        try:
            with self.plans.use() as plan:
                until = self.work.closed_until(lane.name, plan, self.clock())
        except Exception:
            LOG.exception("cannot tell whether a lane is open", lane=lane.name)
            until = None
        if until is None:
            if lane.closed_until is not None:
                LOG.info(f"lane open again; its {self.work.noun}s are claimed", lane=lane.name)
            lane.closed_until = None
            return False
        if lane.closed_until != until:
            LOG.info(
                f"lane closed; its {self.work.noun}s wait", lane=lane.name, until=until.isoformat()
            )
        lane.closed_until = until
        return True

    def _spawn(self, lane: _Lane, capacity: int) -> bool:
        """Claim the lane's next item and run it in a thread of its own; False if none."""
        stack = ExitStack()
        LANE_LOOKS.labels(noun=self.work.noun).inc()
        try:
            plan = stack.enter_context(self.plans.use())
            item = self.work.store.claim_next(
                lane.name,
                worker=self.worker,
                capacity=capacity,
                lease_seconds=self.lease_seconds,
                snapshot=plan.id,
                now=self.clock(),
            )
        except RadbridgeError as exc:  # the store is down: try again at the next poll
            LOG.error(f"cannot claim a {self.work.noun}", lane=lane.name, error=str(exc))
            item = None
        except Exception:
            LOG.exception(f"claiming a {self.work.noun} failed", lane=lane.name)
            item = None
        if item is None:
            stack.close()
            self._release(lane)
            return False
        with self._lock:
            self._held[item.id] = lane.name
        thread = threading.Thread(
            target=self._attempt_thread,
            args=(lane, item, plan, stack),
            name=f"{self.work.verb}-{lane.name}-{item.id}",
            daemon=True,
        )
        with self._lock:
            self._attempts.add(thread)
        thread.start()
        return True

    def _release(self, lane: _Lane) -> None:
        with lane.cond:
            lane.inflight -= 1
            lane.cond.notify()

    def _attempt_thread(self, lane: _Lane, item: I, plan: Plan, stack: ExitStack) -> None:
        try:
            with stack:
                self.handle(item, plan)
        except Exception:  # the store failed: the claim lapses and the timer takes it over
            LOG.exception(f"recording a {self.work.verb} failed", lane=lane.name)
        finally:
            with self._lock:
                self._attempts.discard(threading.current_thread())
            self._release(lane)
            try:
                self.work.freed(lane.name)
            except Exception:  # a wake-up that failed: the lanes' polling finds the work
                LOG.exception("waking a worker failed", lane=lane.name)

    # ---------------------------------------------------------------- one attempt

    def claim(self, lane: str, *, capacity: int | None = None) -> I | None:
        """Claim ``lane``'s next item as this worker (tests and one-off runs)."""
        item = self.work.store.claim_next(
            lane,
            worker=self.worker,
            capacity=capacity,
            lease_seconds=self.lease_seconds,
            snapshot=self.plans.current.id,
            now=self.clock(),
        )
        if item is not None:
            with self._lock:
                self._held[item.id] = lane
        return item

    def handle(self, item: I, plan: Plan) -> I | None:
        """Run one attempt of a claimed item and record its outcome; the item after, or None
        when this worker's claim was lost meanwhile (cancelled, or taken over)."""
        log = self.work.bind(item, LOG).bind(attempt=item.attempts, snapshot=plan.id)
        try:
            try:
                outcome = self.work.attempt(item, plan, log)
            except Exception as exc:  # unexpected: the item is retried like a network error
                log.exception(f"{self.work.verb} failed unexpectedly")
                outcome = Failure(f"{type(exc).__name__}: {exc}", retryable=True)
            done = self._conclude(item, outcome, plan, log)
        finally:
            with self._lock:
                self._held.pop(item.id, None)
        if done is not None:
            try:
                self.work.after(item, done, outcome, plan, log)
            except Exception:
                log.exception(f"after the {self.work.verb}: a follow-up failed")
        return done

    def _conclude(self, item: I, outcome: Outcome, plan: Plan, log: BoundLogger) -> I | None:
        store, machine = self.work.store, self.work.store.kind.machine
        now = self.clock()
        try:
            if isinstance(outcome, Success):
                return store.finish(
                    item.id,
                    list(outcome.path),
                    worker=self.worker,
                    snapshot=plan.id,
                    values=outcome.values,
                    note=outcome.note,
                    now=now,
                )
            if outcome.retryable and not item.exhausted:
                wait = backoff(
                    item.attempts, outcome.backoff_base, outcome.backoff_cap, self.jitter
                )
                done = store.finish(
                    item.id,
                    machine.failed,
                    worker=self.worker,
                    error=outcome.error,
                    next_attempt_at=now + timedelta(seconds=wait),
                    snapshot=plan.id,
                    now=now,
                )
                log.warning(
                    f"{self.work.verb} failed; will retry",
                    error=outcome.error,
                    retry_in=round(wait, 3),
                )
                return done
            done = store.finish(
                item.id,
                machine.dead,
                worker=self.worker,
                error=outcome.error,
                snapshot=plan.id,
                now=now,
            )
            why = outcome.why or ("attempts exhausted" if item.exhausted else "not retryable")
            log.error(
                f"{self.work.verb} failed; {self.work.noun} is dead ({why})", error=outcome.error
            )
            return done
        except WorkStateError as exc:  # cancelled meanwhile, or the lease was lost
            log.warning(f"{self.work.noun} changed while it was sent", error=str(exc))
            return None

    # ---------------------------------------------------------------- leases

    def _heartbeat(self) -> None:
        """Renew this worker's leases every third of a lease while attempts run."""
        interval = self.lease_seconds / 3
        while not self._beat.wait(interval):
            with self._lock:
                held = dict(self._held)
            if not held:
                continue
            try:
                kept = self.work.store.renew(
                    self.worker, held, lease_seconds=self.lease_seconds, now=self.clock()
                )
            except RadbridgeError as exc:
                LOG.error("cannot renew leases", worker=self.worker, error=str(exc))
                continue
            for item_id in sorted(set(held) - kept):
                LOG.warning(
                    f"lease lost: the {self.work.noun} was taken over or moved",
                    **{f"{self.work.noun}_id": item_id},
                    worker=self.worker,
                )


class PauseEnds:
    """The timer's task for pauses with an end (a vendor's maintenance ``--until``): when
    one ends, the lanes look for the items that waited."""

    def __init__(self, next_end: Callable[[datetime], datetime | None], poll: Callable[[], None]):
        self.next_end = next_end
        self.poll = poll
        self._end: datetime | None = None

    def __call__(self, now: datetime) -> datetime | None:
        if self._end is not None and now >= self._end:
            self.poll()
        self._end = self.next_end(now)
        return self._end
