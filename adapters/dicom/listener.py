"""The DICOM listener edge: a supervisor and several SCP processes on one port.

Each process runs ``adapters.dicom.server`` and binds the port with
``SO_REUSEPORT``; the kernel balances new associations across them. A shared
counter enforces the configured maximum of concurrent associations over all of
them. A process that dies is replaced; the others keep serving meanwhile.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from typing import Any

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.server import AssociationCounter, make_server
from broker.edges import ServiceContext
from broker.errors import DicomError, InvalidDicomError, StoreError
from broker.logging import configure_logging, get_logger
from broker.spool import Spool
from broker.store import StudyStore, make_engine
from config.schema import Settings

LOG = get_logger("radbridge.dicom")
_SPAWN = multiprocessing.get_context("spawn")
STOP_GRACE_SECONDS = 10.0
PORT_WAIT_SECONDS = 3.0


def _process_main(settings: Settings, counter: Any, ready: Any, number: int) -> None:
    """Entry point of one listener process (spawned, so nothing is inherited)."""
    logging_cfg = settings.logging
    configure_logging(logging_cfg.level, logging_cfg.format, logging_cfg.phi)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    try:
        store = StudyStore(make_engine(settings.database_url()))
        spool = Spool(settings.storage.spool)
        server = make_server(settings, store, spool, AssociationCounter(counter))
    except Exception as exc:
        ready.put((number, os.getpid(), f"{type(exc).__name__}: {exc}"))
        raise
    thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
    thread.start()
    ready.put((number, os.getpid(), None))
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # the service died (kill -9): do not outlive it
            LOG.error("the radbridge service is gone; listener process exits")
            break
    server.shutdown()
    server.server_close()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.ae.active_associations:
        assoc.abort()


class DicomListener:
    """The ``dicom`` edge: supervises the listener processes."""

    name = "dicom"

    def __init__(self) -> None:
        self._processes: dict[int, SpawnProcess] = {}
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None
        self._context: ServiceContext | None = None
        self._counter: Any = None
        self._ready: Any = None

    @staticmethod
    def process_count(settings: Settings) -> int:
        configured = settings.dicom.processes
        return configured if configured > 0 else min(8, max(2, 2 * (os.cpu_count() or 1)))

    def recover(self, context: ServiceContext) -> None:
        """Index spool files a crash left between the rename and the index commit."""
        recover_spool(context.spool, context.store, context.settings)

    def start(self, context: ServiceContext) -> None:
        listen = context.settings.dicom.listen
        _assert_port_free(listen.host, listen.port)
        self._context = context
        self._counter = _SPAWN.Value("i", 0)
        self._ready = _SPAWN.Queue()
        count = self.process_count(context.settings)
        for number in range(count):
            self._spawn(number)
        self._await_ready(set(range(count)))
        self._watch = threading.Thread(target=self._supervise, name="dicom-supervisor", daemon=True)
        self._watch.start()
        LOG.info(
            "dicom listener started",
            host=listen.host,
            port=listen.port,
            processes=count,
            ae_titles=sorted(context.settings.dicom.ae_titles),
        )

    def _spawn(self, number: int) -> None:
        assert self._context is not None
        process = _SPAWN.Process(
            target=_process_main,
            args=(self._context.settings, self._counter, self._ready, number),
            name=f"radbridge-dicom-{number}",
            daemon=False,
        )
        process.start()
        self._processes[number] = process

    def _await_ready(self, pending: set[int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while pending:
            try:
                number, _pid, error = self._ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty as exc:
                self.stop()
                raise DicomError("the DICOM listener processes did not start in time") from exc
            if error is not None:
                self.stop()
                listen = self._context.settings.dicom.listen if self._context else None
                where = f" on {listen.host}:{listen.port}" if listen else ""
                raise DicomError(f"the DICOM listener cannot start{where}: {error}")
            pending.discard(number)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for number, process in list(self._processes.items()):
                if process.is_alive() or self._stopping.is_set():
                    continue
                LOG.error("dicom listener process died; replacing it", exitcode=process.exitcode)
                self._spawn(number)
                try:
                    self._await_ready({number})
                except DicomError as exc:
                    LOG.error("dicom listener process could not be replaced", error=str(exc))
                    return

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.pid is not None]

    def stop(self) -> None:
        self._stopping.set()
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes.values():
            process.join(STOP_GRACE_SECONDS + 5)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes.clear()


def _assert_port_free(host: str, port: int) -> None:
    """Refuse to start on a port another process listens on.

    The listener processes bind with SO_REUSEPORT, which would let them share
    the port with a stray earlier radbridge and silently split the traffic.
    A plain bind first makes that an error instead.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + PORT_WAIT_SECONDS  # orphans of a killed service exit
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise DicomError(
                        f"cannot listen on {host}:{port}: {exc.strerror}; is another "
                        "radbridge or DICOM service running there?"
                    ) from exc
        time.sleep(0.2)


def recover_spool(spool: Spool, store: StudyStore, settings: Settings) -> int:
    """Index stored files the index does not know; return how many were added."""
    known = set(store.known_paths())
    added = 0
    for path in spool.files():
        if str(path) in known:
            continue
        try:
            record = instance_record_from_spooled_file(path)
            store.record_instance(record, settings.dicom.study_stable_seconds)
            added += 1
        except (InvalidDicomError, StoreError) as exc:
            LOG.error("spooled file cannot be indexed", file=path.name, error=str(exc))
    if added:
        LOG.warning("recovered spooled instances that were not yet indexed", count=added)
    return added
