"""From a stable study to jobs on the bus: routing rules, dispatcher and worker, wired.

The service calls :meth:`RoutingStage.on_stable` for every study the stable
timer closes. The stage decides with the current rules (reloaded on SIGHUP or
when the file changes; a broken file keeps the running rules), turns every
dispatch into a job, and the dispatcher publishes it. Transports are found
through the ``radbridge.registries`` entry point, so the broker never imports
an adapter by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from broker.engine.bus import Bus
from broker.engine.dispatch import DeliveryWorker, Dispatcher, JobRequest, VendorSpec
from broker.model.domain import LinkState
from broker.model.errors import ConfigError, NotFoundError
from broker.model.logging import get_logger
from broker.model.plugins import registered
from broker.model.vendor import VendorTransport
from broker.runtime.billing import Accounting, QuotaGate
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.orders import CANCELLED_STATES, OrderStore
from config.loader import load_settings
from config.schema import Settings, routing_rules
from routing import Decision, RuleSet, decide
from routing.facts import study_tags

LOG = get_logger("radbridge.pipeline")
RELOAD_POLL_SECONDS = 2.0


def vendor_specs(settings: Settings) -> dict[str, VendorSpec]:
    """The delivery settings of every configured vendor product."""
    return {
        name: VendorSpec(
            name=name,
            transport=vendor.transport.type.value,
            params=vendor.transport.params(),
            concurrency=vendor.concurrency,
            max_attempts=vendor.retries,
            backoff_base=settings.delivery.backoff_base_seconds,
            backoff_cap=settings.delivery.backoff_cap_seconds,
        )
        for name, vendor in settings.vendors.items()
    }


def build_transports(specs: dict[str, VendorSpec]) -> dict[str, VendorTransport]:
    """One transport per vendor, from the transport registry the adapters declare."""
    transport_for: Callable[[str], Any] = registered("vendor_transports")
    return {
        name: transport_for(spec.transport).from_params(name, spec.params)
        for name, spec in specs.items()
    }


class Rules:
    """The routing rules in force; ``reload`` swaps them only for a valid file."""

    def __init__(self, settings: Settings, path: Path | None) -> None:
        self.path = path
        self.settings = settings
        """The configuration in force (vendors, billing, routes)."""
        self.current: RuleSet = routing_rules(settings)
        self._mtime = path.stat().st_mtime if path is not None and path.exists() else None

    def reload(self) -> bool:
        """Load the file again; on any error keep the running rules and log why."""
        if self.path is None:
            return False
        try:
            settings = load_settings(self.path)
            rules = routing_rules(settings)
        except ConfigError as exc:
            LOG.error(
                "configuration not reloaded; the running routes stay in force",
                problems=exc.problems,
            )
            return False
        self.current = rules
        self.settings = settings
        LOG.info("routes reloaded", routes=len(settings.routes), vendors=len(settings.vendors))
        return True

    def watch(self, stop: threading.Event, hup: threading.Event) -> None:
        """Reload on SIGHUP (``hup`` set) or when the file's modification time changes."""
        while not stop.is_set():
            if hup.wait(RELOAD_POLL_SECONDS):
                hup.clear()
                self.reload()
                continue
            if self.path is None or not self.path.exists():
                continue
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._mtime = mtime
                self.reload()


class RoutingStage:
    """Decides where each stable study goes (with its order, if one is linked) and creates
    its jobs. A route waiting for an order asks to be decided again when the wait ends;
    an order linked later does the same (``StudyStore.take_route_due``)."""

    def __init__(
        self,
        store: StudyStore,
        jobs: JobStore,
        dispatcher: Dispatcher,
        rules: Rules,
        orders: OrderStore,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.orders = orders
        self.dispatcher = dispatcher
        self.rules = rules
        self.quota = QuotaGate(store.engine)

    def on_stable(self, study_uid: str) -> Decision | None:
        try:
            study = self.store.get_study(study_uid)
        except NotFoundError:
            LOG.error("stable study vanished from the store", study_uid=study_uid)
            return None
        stored, link = self.orders.order_for_study(study)
        if link is not None and link.state is LinkState.PATIENT_MISMATCH:
            LOG.warning(
                "order matches the study but the patient differs; flagged, not linked",
                study_uid=study_uid,
                order_id=link.order_id,
                detail=link.detail,
            )
        order = stored.order if stored is not None else None
        if order is not None and order.status in CANCELLED_STATES:
            LOG.info("study not routed: its order is cancelled", study_uid=study_uid)
            return None
        now = datetime.now(UTC)
        delivered = {(job.route, job.vendor) for job in self.jobs.list(study_uid=study_uid)}
        decision = decide(
            self.rules.current, study, order, now, tags=study_tags(study), delivered=delivered
        )
        if decision.wait_until is not None:
            self.store.route_again_at(study_uid, decision.wait_until)
            LOG.info(
                "study waits for its order",
                study_uid=study_uid,
                until=decision.wait_until.isoformat(timespec="seconds"),
            )
        if decision.unrouted is not None:
            LOG.info("study unrouted", study_uid=study_uid, reason=str(decision.unrouted))
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
            )
            for d in decision.dispatches
            if (d.route, d.vendor) in delivered or self._within_quota(study_uid, d.vendor)
        ]
        for created in self.dispatcher.dispatch(requests):
            LOG.info(
                "study routed",
                study_uid=study_uid,
                route=created.job.route,
                vendor=created.job.vendor,
                job_id=created.job.id,
                priority=str(created.job.priority),
            )
        return decision

    def _within_quota(self, study_uid: str, vendor: str) -> bool:
        refusal = self.quota.refusal(self.rules.settings, vendor)
        if refusal is not None:
            LOG.warning(
                "vendor not sent the study", study_uid=study_uid, vendor=vendor, why=refusal
            )
        return refusal is None


def make_delivery(
    settings: Settings,
    engine: Engine,
    bus: Bus,
    settings_source: Callable[[], Settings] | None = None,
) -> tuple[Dispatcher, DeliveryWorker]:
    """The dispatcher and a worker for every configured vendor; the worker counts usage
    and audits every delivery (billing from ``settings_source``, default ``settings``)."""
    specs = vendor_specs(settings)
    dispatcher = Dispatcher(JobStore(engine), bus, specs)
    accounting = Accounting(engine, settings_source or (lambda: settings))
    worker = DeliveryWorker(
        engine, bus, specs, build_transports(specs), on_sent=[accounting.job_sent]
    )
    return dispatcher, worker
