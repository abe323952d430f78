"""The service: store, spool, the registered edges, and the study stable timer.

``Service.start()`` migrates the store, clears half-received files, lets every
edge recover, then starts them; ``stop()`` stops them in reverse order. The
stable timer reads due times from the store, so after a restart studies that
were still collecting simply continue their countdown.

A node (``node.id``) shares the store, the bus and the spool with other nodes: quiet
studies are judged by whichever node's timer holds the ``completion`` turn, results
completed by the ``results`` turn's holder, and the engine timer's timed actions
(escalations, overdue jobs, priors to clean up, retention, the vendor watch) done by
the ``engine`` turn's holder (:class:`broker.engine.timer.Turn`); lapsed leases,
retries and studies reported by a node's own listener are taken by any node, one
conditional step each.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from broker.engine.bus import Bus
from broker.engine.dispatch import Dispatcher, JobWorker
from broker.engine.timer import WATCHED_SLEEP, ChangeWatch, Task, Timer, Turn
from broker.engine.work import POLL_SECONDS, PauseEnds
from broker.engine.writeback_stage import WritebackStage
from broker.model.logging import get_logger
from broker.model.version import VERSION
from broker.runtime.billing import Accounting
from broker.runtime.canary import Canaries
from broker.runtime.completion import MAX_TIMER_SLEEP as COMPLETION_SLEEP
from broker.runtime.completion import CompletionStage, StableTimer
from broker.runtime.contracts import audit_certificates
from broker.runtime.edges import Edge, ServiceContext, available
from broker.runtime.findings import Reconciliation
from broker.runtime.reload import Reloader
from broker.runtime.reports import FinalReportIntake, matcher_of
from broker.runtime.results import MAX_TIMER_SLEEP as RESULTS_SLEEP
from broker.runtime.results import ResultTimer
from broker.runtime.retention import RetentionTask
from broker.runtime.routing_stage import RoutingStage
from broker.runtime.snapshot import Snapshot, SnapshotHolder, build_snapshot, result_policies
from broker.runtime.watch import VendorWatch
from broker.store import StudyStore, make_engine
from broker.store.audit import AuditLog
from broker.store.changes import StoreChanges
from broker.store.jobs import JOBS, JobStore
from broker.store.migrate import migrate
from broker.store.orders import OrderStore
from broker.store.pauses import LanePauses
from broker.store.results import ResultStore
from broker.store.spool import Spool
from broker.store.timer_claims import TimerClaims
from broker.store.workers import new_worker_id
from config.schema import Settings

LOG = get_logger("radbridge.service")


class Service:
    """One radbridge process: the edges, the stable timer, routing and delivery."""

    def __init__(
        self,
        settings: Settings,
        edges: list[Edge] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        engine = make_engine(settings.database_url())
        self.context = ServiceContext(
            settings=settings,
            engine=engine,
            store=StudyStore(engine),
            spool=Spool(settings.storage.spool, settings.node.id),
        )
        self.edges: list[Edge] = edges if edges is not None else [e() for e in available().values()]
        self.hup = threading.Event()
        self.snapshots = SnapshotHolder(build_snapshot(settings, config_path))
        self.reloader = Reloader(self.snapshots, config_path, engine=engine)
        self.bus = Bus(settings.bus.connection_url(), prefix=settings.bus.prefix)
        self.dispatcher = Dispatcher(JobStore(engine), self.bus, self.snapshots)
        self.turns = node_turns(
            TimerClaims(engine), settings.node.id, settings.delivery.lease_seconds
        )
        # One node on SQLite: the timers and lanes sleep until their next due time, woken by
        # what this process makes and by the watch of the store's changes (another
        # process's work). Else they look at the store as often as their promises need.
        changes = None if self.turns else StoreChanges.of(engine)
        self.watch = ChangeWatch(changes) if changes is not None else None
        watched = self.watch is not None
        poll = WATCHED_SLEEP if watched else POLL_SECONDS
        orders = OrderStore(engine)
        self.completion = CompletionStage(
            self.context.store, orders, self.dispatcher.jobs, self.snapshots
        )
        self.timer = StableTimer(
            self.context.store,
            self.completion,
            turn=self.turns.get("completion"),
            longest=WATCHED_SLEEP if watched else COMPLETION_SLEEP,
        )
        self.context = replace(
            self.context,
            snapshots=self.snapshots,
            reloader=self.reloader,
            evidence=self.timer.evidence,
            timed=self._timed,
        )
        self.accounting = Accounting(engine, lambda: self.snapshots.settings)
        lease = settings.delivery.lease_seconds
        self.worker = JobWorker(
            engine,
            self.bus,
            self.snapshots,
            on_sent=[self.accounting.job_sent],
            lease_seconds=lease,
            scratch=self.context.spool.tmp,
            priors=self.context.spool.priors,
            poll_seconds=poll,
        )
        self.routing = RoutingStage(
            self.context.store,
            self.dispatcher.jobs,
            self.dispatcher,
            self.snapshots,
            orders,
            completion=self.completion,
        )
        self.timer.on_stable.append(self.routing.on_stable)
        # Results from vendors: append to ``self.results.on_complete`` to hear of each one.
        self.results = ResultTimer(
            ResultStore(engine, result_policies(settings)),
            self.dispatcher.jobs,
            self.context.store,
            self.context.spool,
            regulatory=self._regulatory_label,
            turn=self.turns.get("results"),
            longest=WATCHED_SLEEP if watched else RESULTS_SLEEP,
        )
        self.snapshots.on_swap(self._new_result_policies)
        self.snapshots.on_swap(self._audit_certificates)
        self.writeback = WritebackStage(
            engine,
            self.snapshots,
            results=self.results.store.get,
            lease_seconds=lease,
            reconciler=Reconciliation(engine, lambda: self.snapshots.settings, self.context.spool),
            rendered=self.context.spool.rendered,
            poll_seconds=poll,
        )
        self.results.on_complete.append(self.writeback.schedule)
        self.completion.order_status = self.writeback.order_status  # MPPS to the RIS
        self.results.on_complete.append(self.routing.on_result)  # cascades
        reports = FinalReportIntake(engine, matcher_of(self.snapshots))
        self.results.on_complete.append(reports.result_complete)
        watch = VendorWatch(
            engine,
            lambda: self.snapshots.settings,
            notify=self.writeback.webhook_notice,
            wake=self.writeback.lanes_engine.wake,
        )
        self.results.on_complete.append(watch.result_complete)
        canaries = Canaries(
            engine,
            self.context.spool,
            lambda: self.snapshots.settings,
            watch=watch,
            publish=self.dispatcher.publish,
        )
        # The job engine's one timer: lapsed leases, due retries, released items, overdue jobs,
        # critical cases' escalations, priors pulled by vendors whose jobs ended; retention
        # (purges, the free-space alarm); the vendor watch (drift, missing results) and the
        # vendors' canaries.
        retention = RetentionTask(engine, self.context.spool, lambda: self.snapshots.settings)
        self.engine_timer = Timer(
            [
                self.dispatcher.sweep,
                self.writeback.sweep,
                *self._taking_turns(
                    "engine",
                    [
                        self.writeback.overdue,
                        self.writeback.critical.tick,
                        self.worker.work.sweep_priors,
                        retention,
                        watch,
                    ],
                ),
                canaries,  # claimed per vendor and period by the canaries themselves
            ],
            interval=WATCHED_SLEEP if watched else 1.0,
        )
        if self.watch is not None:
            pauses = LanePauses(engine, JOBS)
            self.engine_timer.tasks.append(PauseEnds(pauses.next_end, self.worker.engine.poll))
            for poke, period in (
                (self.timer.wake, COMPLETION_SLEEP),
                (self.results.wake, RESULTS_SLEEP),
                (self.engine_timer.poke, 1.0),
                (self.worker.engine.poll, POLL_SECONDS),
                (self.writeback.lanes_engine.poll, POLL_SECONDS),
            ):
                self.watch.subscribe(poke, period)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started: list[Edge] = []

    def _taking_turns(self, timer: str, tasks: list[Task]) -> list[Task]:
        """``tasks``, each done only while this node holds ``timer``'s turn (one node: always)."""
        turn = self.turns.get(timer)
        return tasks if turn is None else [turn.guard(task) for task in tasks]

    def _timed(self, task: Task) -> None:
        """An edge's timed action on the engine timer, under the ``engine`` turn (edges start
        before the timer's thread, so the list is not read meanwhile)."""
        self.engine_timer.tasks.extend(self._taking_turns("engine", [task]))

    def _regulatory_label(self, vendor: str) -> str | None:
        """The product's regulatory data in the configuration in force (named in its SRs)."""
        return self.snapshots.settings.regulatory_label(vendor)

    def _audit_certificates(self, _old: Snapshot, new: Snapshot) -> None:
        """A swap listener: audit the products without a valid certificate."""
        audit_certificates(AuditLog(self.context.engine), new.settings, datetime.now(UTC))

    def _new_result_policies(self, _old: Snapshot, new: Snapshot) -> None:
        """A swap listener: results that start from now on get the new vendors' policies."""
        self.results.store.policies = dict(new.policies)

    def start(self) -> None:
        self.context.spool.lock()
        migrate(self.context.engine)
        self.reloader.put_in_force_at_start()
        self.context.spool.prepare()
        for edge in self.edges:
            edge.recover(self.context)
        self.accounting.reconcile()
        audit_certificates(
            AuditLog(self.context.engine), self.snapshots.settings, datetime.now(UTC)
        )
        published = self.dispatcher.start()
        if published:
            LOG.info("unfinished jobs published again", jobs=published)
        try:
            # The edges before any thread of the service's own: the DICOM listener forks its
            # processes while the service is still single-threaded (see its start method).
            for edge in self.edges:
                edge.start(self.context)
                self._started.append(edge)
            if self.settings.delivery.worker_in_service:
                self.worker.start()
        except Exception:
            self.stop()
            raise
        for target, name in (
            (lambda: self.engine_timer.run(self._stop), "engine-timer"),
            (lambda: self.reloader.watch(self._stop, self.hup), "config-reload"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.timer.start()
        self.writeback.start()
        self.results.start()
        if self.watch is not None:
            self._threads.append(self.watch.start(self._stop))
        LOG.info(
            "radbridge started",
            version=VERSION,
            site=self.settings.site.name,
            node=self.settings.node.id,
            edges=[e.name for e in self.edges],
            vendors=sorted(self.settings.vendors),
            routes=len(self.settings.routes),
            snapshot=self.snapshots.current.id,
        )

    def stop(self) -> None:
        self.timer.stop()
        self.results.stop()
        self.writeback.stop()
        self._stop.set()
        self.hup.set()  # wakes the configuration watch
        self.engine_timer.poke()
        for edge in reversed(self._started):
            try:
                edge.stop()
            except Exception:
                LOG.exception("edge did not stop cleanly", edge=edge.name)
        self._started.clear()
        self.worker.stop(timeout=30)
        for thread in self._threads:
            thread.join(5)
        for turn in self.turns.values():
            turn.release(datetime.now(UTC))
        self.bus.close()
        self.snapshots.close()
        self.context.engine.dispose()
        LOG.info("radbridge stopped")


def node_turns(claims: TimerClaims, node: str | None, lease_seconds: float) -> dict[str, Turn]:
    """The turns of a node's timers (``completion``, ``results``, ``engine``), held under
    one holder id naming the node; none for the one node (no ``node.id``)."""
    if node is None:
        return {}
    holder = f"{node}:{new_worker_id()}"
    return {
        timer: Turn(claims, timer, holder, lease_seconds)
        for timer in ("completion", "results", "engine")
    }
