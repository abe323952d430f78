"""From a stable study to jobs on the bus.

The service calls :meth:`RoutingStage.on_stable` for every study the stable
timer closes. The stage takes the configuration snapshot in force once,
decides with its routes, and the dispatcher creates and publishes the jobs
with the same snapshot's vendors: a reload in between changes nothing for
this study.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from broker.engine.dispatch import Dispatcher, JobRequest
from broker.model.canary import CANARY_ROUTE
from broker.model.domain import LinkState
from broker.model.errors import NotFoundError
from broker.model.logging import get_logger
from broker.model.mode import ShadowCause
from broker.runtime.completion import CompletionStage
from broker.runtime.contracts import ContractDesk
from broker.runtime.routing_input import stored_input
from broker.runtime.snapshot import Snapshot, SnapshotHolder
from broker.store import StudyStore
from broker.store.contracts import ContractStore
from broker.store.jobs import JobStore
from broker.store.orders import OrderStore
from broker.store.results import ResultStore
from routing import Decision, SkipReason

LOG = get_logger("radbridge.pipeline")
RELOAD_POLL_SECONDS = 2.0


def shadow_cause(routed: ShadowCause | None, configured: bool) -> ShadowCause | None:
    """Why a new job runs in shadow: its contract or certificate (which stay with the job),
    else the route's or the vendor's ``mode: shadow`` (which a reload can lift)."""
    if routed is not None and routed is not ShadowCause.CONFIGURATION:
        return routed
    return ShadowCause.CONFIGURATION if configured else None


class RoutingStage:
    """Decides where each stable study goes (with its order, if one is linked) and creates
    its jobs. A route waiting for an order asks to be decided again when the wait ends;
    an order linked later does the same (``StudyStore.take_route_due``)."""

    def __init__(
        self,
        store: StudyStore,
        jobs: JobStore,
        dispatcher: Dispatcher,
        snapshots: SnapshotHolder,
        orders: OrderStore,
        *,
        completion: CompletionStage | None = None,
    ) -> None:
        self.store = store
        self.completion = completion
        self.jobs = jobs
        self.orders = orders
        self.dispatcher = dispatcher
        self.snapshots = snapshots
        self.contracts = ContractDesk(ContractStore(store.engine))
        self.results = ResultStore(store.engine)

    def on_result(self, result_id: int) -> Decision | None:
        """A result completed: route its study again when a route reads earlier results
        (a cascade), with the configuration in force."""
        with self.snapshots.use() as snapshot:
            if not snapshot.rules.result_keys:
                return None
            try:
                result = self.results.get(result_id)
            except NotFoundError:
                return None
            if result.job_id is None or self.jobs.get(result.job_id).route == CANARY_ROUTE:
                return None  # an orphan, or a canary's: never routed
            LOG.info("study routed again: a result completed", study_uid=result.study_uid)
            return self._route(result.study_uid, snapshot)

    def on_stable(self, study_uid: str) -> Decision | None:
        """Decide with the configuration in force, and create the jobs with the same one."""
        with self.snapshots.use() as snapshot:
            return self._route(study_uid, snapshot)

    def _route(self, study_uid: str, snapshot: Snapshot) -> Decision | None:
        try:
            routing = stored_input(
                self.store, self.orders, self.jobs, study_uid, results=self.results
            )
        except NotFoundError:
            LOG.error("stable study vanished from the store", study_uid=study_uid)
            return None
        study, link = routing.study, routing.link
        if link is not None and link.state is LinkState.PATIENT_MISMATCH:
            LOG.warning(
                "order matches the study but the patient differs; flagged, not linked",
                study_uid=study_uid,
                order_id=link.order_id,
                detail=link.detail,
            )
        if routing.cancelled:
            LOG.info("study not routed: its order is cancelled", study_uid=study_uid)
            return None
        delivered = routing.delivered
        now = datetime.now(UTC)
        decision = self.contracts.route(
            study_uid,
            snapshot.rules,
            now,
            lambda used: replace(routing, used=used).decide(snapshot.rules, now),
            site=study.site,
        )
        skipped = (
            self.completion.skipped(routing, snapshot.rules, now)
            if self.completion is not None
            else frozenset()
        )
        for route in sorted(skipped):
            LOG.info("route skipped: expected series missing", study_uid=study_uid, route=route)
        if decision.wait_until is not None:
            self.store.route_again_at(study_uid, decision.wait_until)
            LOG.info(
                "study waits for its order",
                study_uid=study_uid,
                until=decision.wait_until.isoformat(timespec="seconds"),
            )
        if decision.unrouted is not None:
            unrouted, failure = decision.unrouted, decision.unrouted.failure
            LOG.info(
                "study unrouted",
                study_uid=study_uid,
                closest_route=unrouted.closest_route,
                condition=failure.condition if failure else None,
                wanted=failure.wanted if failure else None,
                study_value=failure.got if failure else None,  # any tag: redacted unless PHI
            )
        for skip in decision.skipped:
            if skip.reason is SkipReason.CONTRACT:
                LOG.warning(
                    "contract: vendor not sent the study",
                    study_uid=study_uid,
                    route=skip.route,
                    vendor=skip.vendor,
                    why=str(skip),
                )
        requests = [
            JobRequest(
                study_uid=study_uid,
                vendor=d.vendor,
                route=d.route,
                priority=d.priority,
                series_uids=d.series_uids,
                deadline=timedelta(seconds=d.deadline_seconds) if d.deadline_seconds else None,
                study_revision=study.revision,
                resend=(d.route, d.vendor) in delivered,
                shadow=shadow_cause(d.terms.shadow, snapshot.shadow(d.route, d.vendor)),
            )
            for d in decision.dispatches
            if d.route not in skipped
        ]
        for created in self.dispatcher.dispatch(requests, plan=snapshot):
            LOG.info(
                "study routed",
                study_uid=study_uid,
                route=created.job.route,
                vendor=created.job.vendor,
                job_id=created.job.id,
                priority=str(created.job.priority),
                shadow=created.job.shadow.value if created.job.shadow else None,
                snapshot=snapshot.id,
            )
        return decision
