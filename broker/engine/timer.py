"""The one timer loop: the job engine's (lapsed leases, due retries, released items, overdue
jobs), and the service's stable and result timers, each a :class:`Timer` of its own tasks.

Each kind of work item gives the timer a :class:`Sweep` over its store; the
write-back stage adds the overdue check. Every tick, for every kind:

* claims whose lease ran out are taken over: the attempt counts, the item is
  ``failed`` (due at once) or ``dead`` if it was the last (``taken_over``);
* failed items whose backoff has passed go back to ``pending``, and items an
  operator released (``retry`` from the CLI, the API or the console, in any
  process) are taken; a worker is woken for each (``wake``).

The loop sleeps until the earliest retry or lease end, ``interval`` at most.
Every step is a conditional update in the store, so several timers (several
services on one store) never do a step twice.

The other timed actions (judging quiet studies, completing due results,
escalations, retention, the vendor watch) are guarded by a :class:`Turn` when
several nodes share the store: only the node holding the timer's claim in the
store does them; another takes over when the holder stops renewing it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from broker.model.errors import StoreError
from broker.model.logging import get_logger
from broker.model.work import WorkItem
from broker.store.timer_claims import TimerClaims
from broker.store.work import WorkStore

LOG = get_logger("radbridge.timer")

I = TypeVar("I", bound=WorkItem)  # noqa: E741 (the item type)
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
        """``task``, run only while this node holds the turn (else: nothing due known)."""

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
    """Runs its tasks in one thread until stopped, sleeping until the earliest next time."""

    def __init__(
        self,
        tasks: Sequence[Task],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        interval: float = 1.0,
    ) -> None:
        self.tasks = list(tasks)
        self.clock = clock
        self.interval = interval
        self._wake = threading.Event()

    def tick(self) -> float:
        """Run every task once; the seconds until the next tick is due (``interval`` at most)."""
        wait = self.interval
        for task in self.tasks:
            try:
                due = task(self.clock())
            except Exception:  # the store or the bus is down: try again later
                LOG.exception("a timer task failed", task=getattr(task, "__qualname__", task))
                continue
            if due is not None:
                wait = min(wait, max((due - self.clock()).total_seconds(), 0.005))
        return wait

    def poke(self) -> None:
        """Tick at once (something became due sooner than the timer knows)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set."""
        while not stop.is_set():
            wait = self.tick()
            self._wake.wait(wait)
            self._wake.clear()

    def start(self, stop: threading.Event, name: str = "engine-timer") -> threading.Thread:
        """Run in a background thread (until ``stop`` is set, then :meth:`poke`)."""
        thread = threading.Thread(target=self.run, args=(stop,), name=name, daemon=True)
        thread.start()
        return thread
