"""A ``radbridge worker`` process: sends vendor jobs, woken from a shared bus, on its own snapshot.

Any number of them share one store and one bus: each claims jobs from the
store under a lease, and a vendor's concurrency holds over all of them
together. The timer that takes over the claims of a worker that died runs in
``radbridge serve``.

It builds the same configuration snapshot as the service from the same file and
reloads it the same way (SIGHUP, the file changing), so a vendor added or moved
reaches every worker process without a restart. It follows the service
(:mod:`broker.runtime.reload`): it reloads when the service puts a new snapshot in
force, keeps the vendors the service keeps draining, and puts a file in force only
when its vendors agree with the service's.
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine

from broker.engine.bus import Bus
from broker.engine.dispatch import JobWorker
from broker.model.logging import get_logger
from broker.model.version import VERSION
from broker.runtime.billing import Accounting
from broker.runtime.reload import Reloader
from broker.runtime.snapshot import SnapshotHolder, build_snapshot
from config.schema import Settings

LOG = get_logger("radbridge.worker")


class WorkerProcess:
    """The job worker of one ``radbridge worker`` process, with its reloader."""

    def __init__(self, settings: Settings, engine: Engine, bus: Bus, path: Path | None) -> None:
        self.snapshots = SnapshotHolder(build_snapshot(settings, path))
        self.reloader = Reloader(self.snapshots, path, engine=engine, role="worker")
        accounting = Accounting(engine, lambda: self.snapshots.settings)
        self.jobs = JobWorker(
            engine,
            bus,
            self.snapshots,
            on_sent=[accounting.job_sent],
            lease_seconds=settings.delivery.lease_seconds,
        )
        self.hup = threading.Event()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        self.jobs.start()
        self._watch = threading.Thread(
            target=self.reloader.watch,
            args=(self._stop, self.hup),
            name="config-reload",
            daemon=True,
        )
        self._watch.start()
        LOG.info(
            "radbridge worker started",
            version=VERSION,
            vendors=self.jobs.vendors,
            worker=self.jobs.worker,
            snapshot=self.snapshots.current.id,
        )

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.hup.set()  # wakes the configuration watch
        self.jobs.stop(timeout=timeout)
        if self._watch is not None:
            self._watch.join(5)
        self.snapshots.close()
