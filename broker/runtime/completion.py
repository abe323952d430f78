"""When a study is complete: on evidence at once, at its quiet time as the fallback.

The :class:`StableTimer` runs in the service. Evidence comes to it from the
edges (:meth:`StableTimer.evidence`): the DICOM listener processes report
each association that stored instances when it ends, each MPPS and each IAN
they kept. The timer asks the :class:`CompletionStage` about each such study
at once, and about every study whose due time came (its quiet time, or the
deadline it was held until). The stage reads the study, its notices and its
expected series from the store and decides with :func:`routing.completion.verdict`;
what decided is the ``complete`` row of the study's history.

Nothing here is only in memory: a study reported but not yet judged when the
service dies is judged at its due time after the restart, on the same
evidence (the notices and the series are in the store).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from broker.engine.timer import Timer, Turn
from broker.model.completion import (
    NoticeKind,
    ProcedureNotice,
    notice_evidence,
    procedure_step_event,
)
from broker.model.errors import NotFoundError
from broker.model.logging import get_logger
from broker.runtime.routing_input import RoutingInput, stored_input
from broker.runtime.snapshot import SnapshotHolder
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.notices import NoticeStore
from broker.store.orders import OrderStore
from broker.store.study_events import StudyEventKind, StudyEvents
from routing import RuleSet
from routing.completion import Expectation, Verdict, verdict
from routing.schema import OnIncomplete

LOG = get_logger("radbridge.completion")
#: Longest wait between two looks at the store when nothing says it changed.
MAX_TIMER_SLEEP = 1.0
#: How long a study waits past a ``wait`` deadline before it is judged again (a new
#: instance judges it at once).
WAIT_RECHECK = timedelta(days=1)

StableListener = Callable[[str], object]


def expects_series(rules: RuleSet) -> bool:
    """Whether any route lists expected series."""
    return any(route.spec.expect is not None for route in rules.routes)


def skipped_routes(routing: RoutingInput, rules: RuleSet, now: datetime) -> frozenset[str]:
    """Routes that must not send the study: their expected series are missing past a
    deadline whose ``on_timeout`` is ``skip``."""
    if not expects_series(rules):
        return frozenset()
    return frozenset(
        e.route
        for e in routing.expectations(rules, now)
        if e.missing and e.on_timeout is OnIncomplete.SKIP and now >= e.deadline
    )


class CompletionStage:
    """Judges whether a study is complete, and closes or holds it in the store."""

    def __init__(
        self,
        store: StudyStore,
        orders: OrderStore,
        jobs: JobStore,
        snapshots: SnapshotHolder,
        *,
        order_status: Callable[[str, str], object] | None = None,
    ) -> None:
        self.store = store
        self.orders = orders
        self.jobs = jobs
        self.snapshots = snapshots
        self.order_status = order_status
        """Makes an order-status update to the RIS: (study UID, procedure-step event)."""
        self.events = StudyEvents(store.engine)
        self.notices = NoticeStore(store.engine)

    def judge(self, study_uid: str, now: datetime, *, quiet: bool) -> Verdict:
        """Complete or not: the study's notices, then its routes' expected series, then
        (``quiet``) the fallback."""
        notices = self.notices.for_study(study_uid)
        evidence = None
        if notices:
            self._forward(study_uid, notices)
            wanted = sorted({uid for n in notices for uid in n.referenced})
            evidence = notice_evidence(notices, self.notices.present(study_uid, wanted))
        with self.snapshots.use() as snapshot:
            rules = snapshot.rules
        expected: tuple[Expectation, ...] = ()
        if evidence is None and expects_series(rules):
            routing = stored_input(self.store, self.orders, self.jobs, study_uid)
            expected = routing.expectations(rules, now)
        return verdict(expected, now, quiet=quiet, notice=evidence)

    def _forward(self, study_uid: str, notices: list[ProcedureNotice]) -> None:
        """Each MPPS status not yet forwarded to the RIS: an order-status update (when
        ``notifications.ris_status.procedure_steps`` says so)."""
        if self.order_status is None:
            return
        steps = [n for n in notices if n.kind is NoticeKind.MPPS]
        if not steps:
            return
        done = self.notices.forwarded(study_uid)
        for notice in steps:
            event = procedure_step_event(notice)
            if event not in done:
                self.order_status(study_uid, event)

    def decide(self, study_uid: str, now: datetime, *, quiet: bool) -> bool:
        """Close the study if it is complete (True), hold it if it is quiet but waits for
        expected series, else leave it to its quiet time."""
        try:
            found = self.judge(study_uid, now, quiet=quiet)
        except NotFoundError:
            return False
        if found.complete:
            assert found.reason is not None
            closed = self.events.close(
                study_uid, found.reason, found.detail, now, due_by=now if quiet else None
            )
            if closed:
                LOG.info("study stable", study_uid=study_uid, reason=found.reason.value)
            return closed
        if not quiet and found.hold_until is not None:
            self.events.due_by(study_uid, found.hold_until)  # act at the deadline, quiet or not
        if quiet:
            until = found.hold_until or now + WAIT_RECHECK
            if self.events.hold(study_uid, until, found.detail or None, now):
                LOG.info(
                    "study waits for expected series",
                    study_uid=study_uid,
                    until=until.isoformat(timespec="seconds"),
                    detail=found.detail,
                )
        return False

    def skipped(self, routing: RoutingInput, rules: RuleSet, now: datetime) -> frozenset[str]:
        """:func:`skipped_routes`, each recorded in the study's history."""
        skipped = skipped_routes(routing, rules, now)
        for route in sorted(skipped):
            missing = next(
                (e.describe() for e in routing.expectations(rules, now) if e.route == route), ""
            )
            self.events.record(
                routing.study.study_uid,
                StudyEventKind.ROUTE_SKIPPED,
                now,
                reason="skip",
                detail=missing,
            )
        return skipped


class StableTimer:
    """Closes studies: those reported with evidence at once, the others once quiet."""

    def __init__(
        self,
        store: StudyStore,
        completion: CompletionStage,
        on_stable: list[StableListener] | None = None,
        *,
        turn: Turn | None = None,
        longest: float = MAX_TIMER_SLEEP,
    ) -> None:
        self.store = store
        self.completion = completion
        self.turn = turn
        """With several nodes: quiet studies are judged here only while this node holds it."""
        self.on_stable = on_stable or []
        self._stop = threading.Event()
        self._timer = Timer([self._close_due], interval=longest, name="completion")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    def wake(self) -> None:
        """Look at the store now (a study or an order may be due)."""
        self._timer.poke()

    def evidence(self, study_uids: Iterable[str]) -> None:
        """Judge these studies now (instances, an MPPS or an IAN came for them)."""
        with self._lock:
            self._reported.update(study_uids)
        self._timer.poke()

    def tick(self) -> list[str]:
        """Judge the reported studies and those due now, and take the stable ones due for
        routing again (an order came, an order wait ended); notify the listeners."""
        now = datetime.now(UTC)
        with self._lock:
            reported, self._reported = self._reported, set()
        closed: list[str] = []
        judged = [(uid, False) for uid in sorted(reported)]
        if self.turn is None or self.turn.held(now):
            judged += [(due.study_uid, True) for due in self.completion.events.due(now)]
        for study_uid, quiet in judged:
            try:
                if self.completion.decide(study_uid, now, quiet=quiet):
                    closed.append(study_uid)
            except Exception:  # one study's failure never stops the others
                LOG.exception("cannot judge a study's completion", study_uid=study_uid)
        again = self.store.take_route_due()
        for study_uid in closed + again:
            for listener in self.on_stable:
                try:
                    listener(study_uid)
                except Exception:  # a notification hook never stops the timer
                    LOG.exception("stable listener failed", study_uid=study_uid)
        return closed

    def _close_due(self, _now: datetime) -> datetime | None:
        """The timer's task: judge and re-route what is due; when the next study is due (not
        known while another node holds the turn: that node judges it)."""
        self.tick()
        if self.turn is not None and not self.turn.held(datetime.now(UTC)):
            return None
        return self.store.next_due()

    def start(self) -> None:
        self._thread = self._timer.start(self._stop, name="stable-timer")

    def stop(self) -> None:
        self._stop.set()
        self._timer.poke()
        if self._thread is not None:
            self._thread.join(10)
