"""The one timer loop: the job engine's (lapsed leases, due retries, released items, overdue
jobs), and the service's stable and result timers, each a :class:`Timer` of its own tasks.

Each kind of work item gives the timer a :class:`Sweep` over its store; the
write-back stage adds the overdue check. Every tick, for every kind:

* claims whose lease ran out are taken over: the attempt counts, the item is
  ``failed`` (due at once) or ``dead`` if it was the last (``taken_over``);
* failed items whose backoff has passed go back to ``pending``, and items an
  operator released (``retry`` from the CLI, the API or the console, in any
  process) are taken; a worker is woken for each (``wake``).

Each task says when it next has work; the loop runs a task when that time comes, and every
task when poked (something new is due in this process) or when the store changed (a
:class:`ChangeWatch`: another process's work), sleeping ``interval`` at most. Every step is
a conditional update in the store, so several timers (several services on one store)
never do a step twice.

The other timed actions (judging quiet studies, completing due results,
escalations, retention, the vendor watch) are guarded by a :class:`Turn` when
several nodes share the store: only the node holding the timer's claim in the
store does them; another takes over when the holder stops renewing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from broker.engine.metrics import TIMER_TICKS
from broker.model.errors import StoreError
from broker.model.logging import get_logger
from broker.model.work import WorkItem
from broker.store.changes import StoreChanges
from broker.store.timer_claims import TimerClaims
from broker.store.work import WorkStore

LOG = get_logger("radbridge.timer")

I = TypeVar("I", bound=WorkItem)  # noqa: E741 (the item type)
#: How often a :class:`ChangeWatch` looks at the store (the results' promise is the shortest).
WATCH_SECONDS = 0.5
#: The longest sleep of the timers and lanes of a service whose store tells of changes: a
#: safety net only (work another process makes wakes them through the watch).
WATCHED_SLEEP = 60.0
#: One task of the timer: do what is due at ``now``; when it next has work (None: not known).
Task = Callable[[datetime], datetime | None]


def _ignore(_item: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Sweep(Generic[I]):
    """The timer's task for one kind of work item."""

    store: WorkStore[I, Any, Any]
    wake: Callable[[I], object]
    """A worker should look at this item (requeued or released)."""
    taken_over: Callable[[I], object] = _ignore
    """A lapsed claim was taken over (the item is failed or dead now)."""
    snapshot: Callable[[], str | None] = lambda: None
    """The configuration in force, named in the history rows the timer writes."""

    def __call__(self, now: datetime) -> datetime | None:
        noun = self.store.kind.machine.noun
        snapshot = self.snapshot()
        for item in self.store.expire_leases(now, snapshot=snapshot):
            LOG.warning(
                f"{noun} taken over: its worker's lease ran out",
                **{f"{noun}_id": item.id},
                state=str(getattr(item, "state", "")),
                attempt=item.attempts,
            )
            self.taken_over(item)
        requeued = self.store.requeue_due(now, snapshot=snapshot)
        for item in requeued + self.store.take_released(now):
            self.wake(item)
        return self.store.next_wakeup()


class Turn:
    """A timer's turn among the nodes: held while this node's claim in the store runs.

    The claim is renewed every third of ``lease_seconds`` while held, and asked for
    about every second while another node holds it; a node that dies (or loses the
    store) loses it ``lease_seconds`` after its last renewal at the latest.
    """

    def __init__(self, claims: TimerClaims, timer: str, holder: str, lease_seconds: float) -> None:
        self.claims = claims
        self.timer = timer
        self.holder = holder
        self.lease = timedelta(seconds=lease_seconds)
        self._held = False
        self._ask_at: datetime | None = None
        self._lock = threading.Lock()

    def held(self, now: datetime) -> bool:
        """Whether this node does the timer's actions now (taking or renewing when due)."""
        with self._lock:
            if self._ask_at is not None and now < self._ask_at:
                return self._held
            try:
                held = self.claims.hold(self.timer, self.holder, now, self.lease)
            except StoreError:
                LOG.exception("cannot claim a timer; its actions wait", timer=self.timer)
                held = False
            if held != self._held:
                LOG.info(
                    "timer taken" if held else "timer held by another node",
                    timer=self.timer,
                    holder=self.holder,
                )
            self._held = held
            step = self.lease / 3 if held else min(self.lease / 3, timedelta(seconds=1))
            self._ask_at = now + step
            return held

    def guard(self, task: Task) -> Task:
        """``task``, run only while this node holds the turn (else: nothing due known). The
        timer runs it at least every third of the lease (its ``interval`` is shorter),
        so the claim is renewed in time."""

        def guarded(now: datetime) -> datetime | None:
            return task(now) if self.held(now) else None

        guarded.__qualname__ = getattr(task, "__qualname__", type(task).__qualname__)
        return guarded

    def release(self, now: datetime) -> None:
        """Give the turn up (the node stops); failures only cost the others the lease."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            self._ask_at = None
            try:
                self.claims.release(self.timer, self.holder, now)
            except StoreError:
                LOG.warning("timer not given up; another node takes it after the lease")


class Timer:
    """Runs its tasks in one thread until stopped, each when it is due, sleeping until the
    earliest: ``interval`` at most, less when poked."""

    def __init__(
        self,
        tasks: Sequence[Task],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        interval: float = 1.0,
        name: str = "engine",
    ) -> None:
        self.tasks = list(tasks)
        self.clock = clock
        self.interval = interval
        """The longest sleep: a task that knows of no work is run again after it."""
        self.name = name
        self._due: dict[int, datetime] = {}
        self._wake = threading.Event()

    def tick(self, *, everything: bool = True) -> float:
        """Run every task (``everything``) or those due; the seconds until the next is due
        (``interval`` at most)."""
        TIMER_TICKS.labels(timer=self.name).inc()
        horizon = self.clock() + timedelta(seconds=self.interval)
        for index, task in enumerate(self.tasks):
            now = self.clock()
            due = self._due.get(index)
            if not everything and due is not None and now < due:
                continue
            try:
                found = task(now)
            except Exception:  # the store or the bus is down: try again later
                LOG.exception("a timer task failed", task=getattr(task, "__qualname__", task))
                found = None
            self._due[index] = horizon if found is None else min(found, horizon)
        wake_at = min(self._due.values(), default=horizon)
        return max((wake_at - self.clock()).total_seconds(), 0.005)

    def poke(self) -> None:
        """Run every task at once (something became due sooner than the timer knows)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set."""
        everything = True
        while not stop.is_set():
            wait = self.tick(everything=everything)
            everything = self._wake.wait(wait)
            if everything:  # a poke after this is kept for the next wait
                self._wake.clear()

    def start(self, stop: threading.Event, name: str = "engine-timer") -> threading.Thread:
        """Run in a background thread (until ``stop`` is set, then :meth:`poke`)."""
        thread = threading.Thread(target=self.run, args=(stop,), name=name, daemon=True)
        thread.start()
        return thread


class ChangeWatch:
    """Looks at the store every ``every`` seconds and, when another connection (any
    process) committed since, pokes its subscribers: each at most once per its own period
    (the old polling cadence), and once more after it when the store changed meanwhile."""

    def __init__(self, changes: StoreChanges, every: float = WATCH_SECONDS) -> None:
        self.changes = changes
        self.every = every
        self._subscribers: list[_Subscriber] = []

    def subscribe(self, poke: Callable[[], object], period: float) -> None:
        """Call ``poke`` when the store changed, at most every ``period`` seconds."""
        self._subscribers.append(_Subscriber(poke, period))

    def look(self, now: float) -> bool:
        """One look at the store (``now``: a monotonic time); whether it changed."""
        changed = self.changes.changed()
        for subscriber in self._subscribers:
            subscriber.pending = subscriber.pending or changed
            if subscriber.pending and now - subscriber.poked >= subscriber.period:
                subscriber.pending, subscriber.poked = False, now
                try:
                    subscriber.poke()
                except Exception:  # a poke that failed: the subscriber's own sleep ends
                    LOG.exception("a store change was not passed on")
        return changed

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            self.look(time.monotonic())
        self.changes.close()

    def start(self, stop: threading.Event) -> threading.Thread:
        self.changes.changed()  # the count as it is now: what the timers' first ticks see
        thread = threading.Thread(target=self.run, args=(stop,), name="store-watch", daemon=True)
        thread.start()
        return thread


@dataclass(slots=True)
class _Subscriber:
    poke: Callable[[], object]
    period: float
    pending: bool = False
    poked: float = float("-inf")
