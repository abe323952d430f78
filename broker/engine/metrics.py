"""Prometheus metrics: gauges read from the store at scrape time, histograms in process.

The DICOM listener runs in several processes and jobs may be delivered by
``radbridge worker`` processes on other machines, so counts that must add up
across processes (instances and bytes received, studies and jobs by state,
queue depth) are read from the store, the one place every process writes
to, when Prometheus scrapes (at most every :data:`STORE_CACHE_SECONDS`).
Latencies are histograms of the process that serves ``/metrics``: with the
default ``delivery.worker_in_service`` that is every delivery; deliveries made
by separate ``radbridge worker`` processes are not in them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from broker.model.domain import StudyState
from broker.model.jobs import UNFINISHED, JobState
from broker.model.logging import get_logger
from broker.model.writeback import DeliveryState
from broker.store.deliveries import OVERDUE_STATES
from broker.store.overview import job_counts
from broker.store.space import FreeSpace, SpaceWatch, database_bytes, spool_bytes
from broker.store.tables import deliveries, instances, jobs, studies, vendor_alerts

LOG = get_logger("radbridge.metrics")

#: Store figures are computed at most this often, however often Prometheus scrapes.
STORE_CACHE_SECONDS = 5.0

#: Seconds: from under a second (a small study on a LAN) to an hour (a big one over a WAN).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

#: Histograms and counters of this process.
REGISTRY = CollectorRegistry()

DELIVERY_SEND_SECONDS = Histogram(
    "radbridge_delivery_send_seconds",
    "How long sending a study to a vendor took (the transport's send).",
    ["vendor"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_LATENCY_SECONDS = Histogram(
    "radbridge_delivery_latency_seconds",
    "From the job's creation (the study stable and routed) until the vendor has it.",
    ["vendor", "priority"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
WRITEBACK_LATENCY_SECONDS = Histogram(
    "radbridge_writeback_latency_seconds",
    "From a result being complete until a write-back target has it.",
    ["target"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIMER_TICKS = Counter(
    "radbridge_timer_ticks",
    "Wake-ups of the service's timers (engine, completion, results): each looks at the store.",
    ["timer"],
    registry=REGISTRY,
)
LANE_LOOKS = Counter(
    "radbridge_lane_looks",
    "Claims the job engine's lanes tried (jobs, deliveries), found or not.",
    ["noun"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "radbridge_errors",
    "Errors by stage (delivery, writeback, accounting) and kind (the exception's class).",
    ["stage", "kind"],
    registry=REGISTRY,
)


def count_error(stage: str, error: BaseException | str) -> None:
    """Count an error of ``stage``; ``error`` is the exception or its kind."""
    kind = error if isinstance(error, str) else type(error).__name__
    ERRORS.labels(stage=stage, kind=kind).inc()


def observe_writeback(target: str, seconds: float) -> None:
    """For the write-back stage: a result reached ``target`` ``seconds`` after it was complete."""
    WRITEBACK_LATENCY_SECONDS.labels(target=target).observe(max(seconds, 0.0))


@dataclass(frozen=True, slots=True)
class StoreFigures:
    instances: int
    bytes: int
    studies: dict[str, int]
    jobs: dict[tuple[str, str], int]
    spool_bytes: int = 0
    database_bytes: int | None = None
    deliveries: dict[tuple[str, str], int] = field(default_factory=dict)
    """Write-backs and notifications by (state, target)."""
    overdue: dict[str, int] = field(default_factory=dict)
    """Jobs past their deadline without a result, by vendor."""
    alerts: dict[tuple[str, str], int] = field(default_factory=dict)
    """Vendor alerts raised (drift, version_changed, …), by (vendor, kind)."""


def read_figures(engine: Engine) -> StoreFigures:
    """Counts from the store (each an index-only or aggregate query)."""
    held, database = spool_bytes(engine), database_bytes(engine)
    with engine.connect() as conn:
        n, size = conn.execute(
            select(func.count(), func.coalesce(func.sum(instances.c.size), 0))
        ).one()
        by_state: dict[str, int] = {
            str(state): int(count)
            for state, count in conn.execute(
                select(studies.c.state, func.count()).group_by(studies.c.state)
            ).all()
        }
        by_job = {(state, vendor): count for (vendor, state), count in job_counts(conn).items()}
        by_delivery = {
            (state, target): int(count)
            for target, state, count in conn.execute(
                select(deliveries.c.target, deliveries.c.state, func.count()).group_by(
                    deliveries.c.target, deliveries.c.state
                )
            ).all()
        }
        overdue = {
            str(vendor): int(count)
            for vendor, count in conn.execute(
                select(jobs.c.vendor, func.count())
                .where(
                    jobs.c.state.in_([s.value for s in OVERDUE_STATES]),
                    jobs.c.deadline_at <= datetime.now(UTC),
                )
                .group_by(jobs.c.vendor)
            ).all()
        }
        alerts = {
            (str(vendor), str(kind)): int(count)
            for vendor, kind, count in conn.execute(
                select(vendor_alerts.c.vendor, vendor_alerts.c.kind, func.count()).group_by(
                    vendor_alerts.c.vendor, vendor_alerts.c.kind
                )
            ).all()
        }
    return StoreFigures(
        int(n), int(size), by_state, by_job, held, database, by_delivery, overdue, alerts
    )


class StoreCollector(Collector):
    """Gauges and totals read from the store when Prometheus scrapes."""

    def __init__(
        self, engine: Engine, vendors: tuple[str, ...] = (), space: SpaceWatch | None = None
    ) -> None:
        self.engine = engine
        self.vendors = vendors
        self.space = space
        """The spool's free space (not reported without it)."""
        self._lock = threading.Lock()
        self._cached: tuple[float, StoreFigures | None] = (0.0, None)

    def figures(self) -> StoreFigures | None:
        with self._lock:
            at, figures = self._cached
            if figures is not None and time.monotonic() - at < STORE_CACHE_SECONDS:
                return figures
            try:
                figures = read_figures(self.engine)
            except SQLAlchemyError as exc:
                LOG.warning("metrics cannot read the store", error=str(exc))
                figures = None
            self._cached = (time.monotonic(), figures)
            return figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        up = GaugeMetricFamily("radbridge_store_up", "1 when the store answered the last scrape.")
        up.add_metric([], 1 if figures is not None else 0)
        yield up
        if self.space is not None:
            yield from _space_gauges(self.space.current())
        if figures is None:
            return
        yield GaugeMetricFamily(
            "radbridge_spool_bytes",
            "Bytes the spool holds: instances of studies not purged, and result objects.",
            value=figures.spool_bytes,
        )
        if figures.database_bytes is not None:
            yield GaugeMetricFamily(
                "radbridge_database_bytes",
                "Size of the database on disk (SQLite file and WAL, or the PostgreSQL database).",
                value=figures.database_bytes,
            )
        received = CounterMetricFamily(
            "radbridge_received_instances", "DICOM instances received and indexed (store)."
        )
        received.add_metric([], figures.instances)
        yield received
        size = CounterMetricFamily(
            "radbridge_received_bytes", "Bytes of the DICOM instances received (store)."
        )
        size.add_metric([], figures.bytes)
        yield size
        study_gauge = GaugeMetricFamily("radbridge_studies", "Studies by state.", labels=["state"])
        for study_state in StudyState:
            study_gauge.add_metric([study_state.value], figures.studies.get(study_state.value, 0))
        yield study_gauge
        vendors = sorted(set(self.vendors) | {v for _, v in figures.jobs})
        job_gauge = GaugeMetricFamily(
            "radbridge_jobs",
            "Jobs by state and vendor (not the canaries: their outcome is their run's).",
            labels=["state", "vendor"],
        )
        depth = GaugeMetricFamily(
            "radbridge_queue_depth",
            "Jobs of a vendor not delivered yet (pending, sending, failed).",
            labels=["vendor"],
        )
        for vendor in vendors:
            for state in JobState:
                job_gauge.add_metric([state.value, vendor], figures.jobs.get((state, vendor), 0))
            depth.add_metric(
                [vendor], sum(figures.jobs.get((s.value, vendor), 0) for s in UNFINISHED)
            )
        overdue = GaugeMetricFamily(
            "radbridge_jobs_overdue",
            "Jobs of a vendor sent but without a result past their route's deadline.",
            labels=["vendor"],
        )
        for vendor in vendors:
            overdue.add_metric([vendor], figures.overdue.get(vendor, 0))
        yield job_gauge
        yield depth
        yield overdue
        alerts = CounterMetricFamily(
            "radbridge_vendor_alerts",
            "Vendor alerts raised: drift, version_changed, results_missing, canary_failed.",
            labels=["vendor", "kind"],
        )
        for (vendor, kind), count in sorted(figures.alerts.items()):
            alerts.add_metric([vendor, kind], count)
        yield alerts
        yield from _delivery_gauge(figures.deliveries)


def _delivery_gauge(counts: dict[tuple[str, str], int]) -> Iterator[Metric]:
    gauge = GaugeMetricFamily(
        "radbridge_deliveries",
        "Write-backs and notifications by state and target.",
        labels=["state", "target"],
    )
    for target in sorted({t for _, t in counts}):
        for state in DeliveryState:
            gauge.add_metric([state.value, target], counts.get((state.value, target), 0))
    yield gauge


class BusCollector(Collector):
    """``radbridge_bus_up``: whether the message bus accepted a connection."""

    def __init__(self, up: Callable[[], bool]) -> None:
        self.up = up

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "radbridge_bus_up",
            "1 when the message bus accepted a connection (checked at most every 5 s).",
            value=1 if self.up() else 0,
        )


def _space_gauges(space: FreeSpace) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "radbridge_free_space_bytes",
        "Free space of the spool's file system.",
        value=space.free,
    )
    yield GaugeMetricFamily(
        "radbridge_min_free_space_bytes",
        "storage.min_free_space in bytes: below it new DICOM instances are refused.",
        value=space.minimum,
    )
    yield GaugeMetricFamily(
        "radbridge_free_space_low",
        "1 while the free space is below storage.min_free_space (DICOM intake stopped).",
        value=1 if space.low else 0,
    )


def exposition(store: StoreCollector, bus: BusCollector | None = None) -> bytes:
    """The Prometheus text format: the store's figures, the bus, then this process's
    histograms."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(store)
    if bus is not None:
        registry.register(bus)
    return generate_latest(registry) + generate_latest(REGISTRY)
