"""The DICOM listener edge: one acceptor, several SCP processes.

The supervisor (in the service process) owns the port: it accepts each TCP
connection and hands the socket (``SCM_RIGHTS`` over a Unix socket pair) to
the listener process with the fewest open associations. Each listener process
runs ``adapters.dicom.server``; several of them keep ingest from being bound
by one interpreter's GIL. A slot board in shared memory
(:mod:`adapters.dicom.slots`) counts pending connections and associations over
all of them: the acceptor closes a connection at once, unread, when too many
are pending or its peer address holds too many; a listener process counts an
association when its request is accepted, and gives every slot back when the
connection ends. A process that dies is replaced, its slots forgotten; the
others keep serving meanwhile. One that stopped cleanly (a SIGTERM: it drains
and exits) is replaced only if the service does not stop meanwhile: a SIGTERM
to the whole process group, as systemd sends, reaches the service too.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import threading
import time
from dataclasses import replace
from multiprocessing import connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar

from adapters.dicom.mapping import instance_record_from_spooled_file
from adapters.dicom.server import ListenerServer, make_server
from adapters.dicom.slots import Held, Limits, ProcessSlots, Refusal, SlotBoard, inode_of
from adapters.sockets import listen
from broker.model.errors import DicomError, InvalidDicomError, NotFoundError, StoreError
from broker.model.identity import IdentityConflictError
from broker.model.logging import configure_logging, get_logger
from broker.runtime.edges import Edge, ServiceContext
from broker.runtime.snapshot import Snapshot
from broker.store import StudyStore, make_engine
from broker.store.reconcile import unfinished
from broker.store.spool import Spool
from config.schema import Settings

LOG = get_logger("radbridge.dicom")
_SPAWN = multiprocessing.get_context("spawn")
_FORK = multiprocessing.get_context("fork")
STOP_GRACE_SECONDS = 10.0
#: Longest the acceptor waits for a listener process to take a connection.
HANDOFF_TIMEOUT = 5.0
#: Longest the supervisor sleeps (a process's end or a stop wakes it at once).
SUPERVISE_SECONDS = 60.0
#: How long a listener process that stopped cleanly (a SIGTERM: it drains and exits 0) waits
#: to be replaced: a SIGTERM to the whole process group (systemd's default) reaches the
#: service too, which then stops (its edges last); a crashed process is replaced at once.
ENDED_WITH_THE_SERVICE_SECONDS = STOP_GRACE_SECONDS
#: Refused connections are logged at most once per this many seconds (with a count).
REFUSAL_LOG_INTERVAL = 10.0
#: Handoff messages from the supervisor: a connection (with its socket), new settings.
CONNECTION = b"c"
SETTINGS = b"s"


def _process_main(  # noqa: PLR0917 - a spawned process's target gets its arguments by position
    settings: Settings,
    board: SlotBoard,
    slot: int,
    handoff: socket.socket,
    ready: Any,
    evidence: Any,
    inherited: tuple[int, ...] = (),
) -> None:
    """Entry point of one listener process; it puts the studies to judge for completion on
    ``evidence`` (a queue the supervisor reads). A forked process first closes the
    descriptors of the service's it must not keep open (``inherited``: the listening socket
    and the spool's lock, which would otherwise outlive a service killed with -9)."""
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging_cfg = settings.logging
    configure_logging(
        logging_cfg.level, logging_cfg.format, logging_cfg.phi, file=logging_cfg.log_file()
    )
    signal.signal(signal.SIGTERM, lambda *_: handoff.shutdown(socket.SHUT_RDWR))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    try:
        store = StudyStore(make_engine(settings.database_url()))
        spool = Spool(settings.storage.spool, settings.node.id)
        server = make_server(settings, store, spool, ProcessSlots(board, slot), evidence.put)
        store.prepare()
    except Exception as exc:
        ready.put((slot, os.getpid(), f"{type(exc).__name__}: {exc}"))
        raise
    ready.put((slot, os.getpid(), None))
    _receive_connections(handoff, server)
    _drain(server)


def _receive_connections(handoff: socket.socket, server: ListenerServer) -> None:
    """Serve every connection the supervisor hands over, and apply every configuration it
    sends (after a reload), until it stops or dies."""
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(handoff, 1, 4)
        except OSError:
            return
        if not message:  # the supervisor closed its end: stopping, or it died
            for fd in fds:
                os.close(fd)
            return
        for fd in fds:
            server.take(socket.socket(fileno=fd))
        if message == SETTINGS:
            try:
                size = int.from_bytes(_receive_exactly(handoff, 8), "big")
                settings = pickle.loads(_receive_exactly(handoff, size))  # noqa: S301 - our own
            except (OSError, EOFError):
                return
            try:
                server.reconfigure(settings)
            except Exception as exc:  # a peer's host that does not resolve, …: keep serving
                LOG.error("listener process keeps its configuration", error=str(exc))


def _receive_exactly(handoff: socket.socket, size: int) -> bytes:
    """``size`` bytes of the handoff stream (never more: the next message may carry a socket)."""
    parts: list[bytes] = []
    while size:
        part = handoff.recv(min(size, 1 << 20))
        if not part:
            raise EOFError("the supervisor closed the handoff")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _drain(server: ListenerServer) -> None:
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.ae.active_associations:
        assoc.abort()
    server.server_close()


def _start_method() -> ForkContext | SpawnContext:
    """How a listener process starts: forked while the service runs no other thread (at its
    start, when the processes are made before any thread: each shares the libraries the
    service imported, copy-on-write, instead of importing them again, which costs one to
    two seconds of CPU and tens of MB per process), spawned afterwards (a replacement for a
    process that died, while threads run whose locks a fork could copy held)."""
    return _FORK if threading.active_count() == 1 else _SPAWN


class DicomListener(Edge):
    """The ``dicom`` edge: the acceptor and the supervised listener processes."""

    name: ClassVar[str] = "dicom"

    def __init__(self) -> None:
        self._processes: dict[int, BaseProcess] = {}
        self._handoffs: dict[int, socket.socket] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._context: ServiceContext | None = None
        self._board: SlotBoard | None = None
        self._refusals = RefusalLog()
        self._ready: Any = None
        self._evidence: Any = None
        """Study UIDs the listener processes report for completion (a spawn queue)."""
        self._socket: socket.socket | None = None
        self._stop_reader: socket.socket | None = None
        self._stop_writer: socket.socket | None = None
        """A stop wakes the supervisor through this pair."""
        self._send = threading.Lock()
        """One message at a time on the handoffs (connections, settings)."""

    @staticmethod
    def process_count(settings: Settings) -> int:
        configured = settings.dicom.processes
        return configured if configured > 0 else min(8, max(2, os.cpu_count() or 1))

    def recover(self, context: ServiceContext) -> None:
        """Index spool files a crash left between the rename and the index commit."""
        recover_spool(context.spool, context.store, context.settings)

    def _settings(self) -> Settings:
        """The configuration in force (the reloaded one after a reload)."""
        assert self._context is not None
        holder = self._context.snapshots
        return holder.settings if holder is not None else self._context.settings

    def _reconfigure(self, old: Snapshot, new: Snapshot) -> None:
        """A swap listener: send the new settings to every listener process."""
        if new.settings is old.settings or self._stopping.is_set():
            return
        payload = pickle.dumps(new.settings)
        frame = SETTINGS + len(payload).to_bytes(8, "big") + payload
        with self._send:
            for slot, handoff in list(self._handoffs.items()):
                try:
                    handoff.sendall(frame)
                except OSError as exc:  # a dying process: its replacement gets the new settings
                    LOG.warning("listener process not reconfigured", slot=slot, error=str(exc))

    def start(self, context: ServiceContext) -> None:
        listen_at = context.settings.dicom.listen
        self._socket = listen(
            listen_at.host,
            listen_at.port,
            service="DICOM",
            hint="is another radbridge or DICOM service running there?",
        )
        self._context = context
        if context.snapshots is not None:
            context.snapshots.on_swap(self._reconfigure)
        count = self.process_count(context.settings)
        # Sized at start: the three limits need a restart to change.
        self._board = SlotBoard(count, Limits.from_settings(context.settings.dicom))
        self._ready = _SPAWN.Queue()
        self._evidence = _SPAWN.Queue()
        self._stop_reader, self._stop_writer = socket.socketpair()
        for slot in range(count):
            self._spawn(slot)
        self._await_ready(set(range(count)))
        for target, name in (
            (self._accept, "dicom-acceptor"),
            (self._supervise, "dicom-supervisor"),
            (self._pass_evidence, "dicom-evidence"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        LOG.info(
            "dicom listener started",
            host=listen_at.host,
            port=listen_at.port,
            processes=count,
            ae_titles=sorted(context.settings.dicom.ae_titles),
        )

    def _spawn(self, slot: int) -> None:
        assert self._context is not None and self._board is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.settimeout(HANDOFF_TIMEOUT)  # a stuck listener process never stalls the acceptor
        self._board.reset(slot)
        method = _start_method()
        inherited = self._inherited(ours) if method is _FORK else ()
        args = (self._settings(), self._board, slot, theirs, self._ready, self._evidence)
        with self._send:  # a reload meanwhile reaches the new process through its handoff
            process = method.Process(
                target=_process_main,
                args=(*args, inherited),
                name=f"radbridge-dicom-{slot}",
                daemon=False,
            )
            process.start()
            theirs.close()
            old = self._handoffs.pop(slot, None)
            if old is not None:
                old.close()
            self._processes[slot] = process
            self._handoffs[slot] = ours

    def _inherited(self, ours: socket.socket) -> tuple[int, ...]:
        """The descriptors a forked listener process closes first: the spool's lock, the
        listening socket, the supervisor's stop pair and its ends of the handoffs (a
        process holding one would keep its listener process from seeing the supervisor
        close it)."""
        assert self._context is not None
        held = [self._context.spool.lock_descriptor, ours.fileno()]
        shared = (self._socket, self._stop_reader, self._stop_writer, *self._handoffs.values())
        held += [s.fileno() for s in shared if s is not None]
        return tuple(fd for fd in held if fd is not None and fd >= 0)

    def _await_ready(self, pending: set[int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while pending:
            try:
                slot, _pid, error = self._ready.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty as exc:
                self.stop()
                raise DicomError("the DICOM listener processes did not start in time") from exc
            if error is not None:
                self.stop()
                raise DicomError(f"a DICOM listener process cannot start: {error}")
            pending.discard(slot)

    def _accept(self) -> None:
        assert self._socket is not None and self._board is not None
        while not self._stopping.is_set():
            try:
                conn, address = self._socket.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            with conn:
                self._hand_over(conn, str(address[0]))

    def _hand_over(self, conn: socket.socket, peer: str) -> None:
        """Give the connection to the least busy live listener process, if it may have one."""
        assert self._board is not None
        alive = [s for s, p in self._processes.items() if p.is_alive() and s in self._handoffs]
        for slot in self._board.least_busy(alive):
            refusal = self._board.admit_connection(slot, conn, peer)
            if refusal is not None:
                self._refusals.refused(refusal, peer)
                return  # closed unread by the caller
            try:
                with self._send:
                    socket.send_fds(self._handoffs[slot], [CONNECTION], [conn.fileno()])
                return
            except OSError:
                self._board.release(slot, inode_of(conn), state=Held.PENDING)
        LOG.error("no DICOM listener process could take a connection; closing it")

    def _pass_evidence(self) -> None:
        """Hand the studies the listener processes report to the service's completion judge."""
        assert self._context is not None
        judge = self._context.evidence
        while not self._stopping.is_set():
            try:
                study_uids = self._evidence.get()  # stop() puts None
            except (OSError, EOFError, ValueError):  # the queue closed: stopping
                return
            if study_uids is None:  # stop() wakes this thread
                return
            if judge is not None:
                try:
                    judge(study_uids)
                except Exception:  # the quiet timer still closes them
                    LOG.exception("studies not passed on for completion")

    def _supervise(self) -> None:
        """Replace each listener process that dies, as it dies (woken by its end or a stop)."""
        assert self._stop_reader is not None
        while not self._stopping.is_set():
            ends = [process.sentinel for process in self._processes.values()]
            connection.wait([*ends, self._stop_reader], timeout=SUPERVISE_SECONDS)
            ended = [p.exitcode for p in self._processes.values() if not p.is_alive()]
            if ended and not any(ended) and self._stopping.wait(ENDED_WITH_THE_SERVICE_SECONDS):
                return  # asked to stop with the service (a SIGTERM to the whole group)
            for slot, process in list(self._processes.items()):
                if process.is_alive() or self._stopping.is_set():
                    continue
                code = process.exitcode
                if code:
                    LOG.error("dicom listener process died; replacing it", exitcode=code)
                else:
                    LOG.warning("dicom listener process stopped alone; replacing it")
                self._spawn(slot)
                try:
                    self._await_ready({slot})
                except DicomError as exc:
                    LOG.error("dicom listener process could not be replaced", error=str(exc))
                    return

    def stop(self) -> None:
        """Stop accepting, let open associations finish (up to a grace time), stop."""
        self._stopping.set()
        if self._stop_writer is not None:
            with contextlib.suppress(OSError):
                self._stop_writer.send(b"x")  # wakes the supervisor
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            self._socket.close()
        for handoff in self._handoffs.values():
            handoff.close()  # each process sees end-of-file, drains and exits
        for process in self._processes.values():
            process.join(STOP_GRACE_SECONDS + 5)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes.clear()
        self._handoffs.clear()
        self._release_shared()

    def _release_shared(self) -> None:
        """End the threads and let go of the queues and the slot board, whose semaphores
        are unlinked as they go. ``serve`` ends with ``os._exit``, which skips
        multiprocessing's own clean-up: without this its resource tracker warns of
        "leaked semaphore objects" at every stop."""
        if self._evidence is not None:
            with contextlib.suppress(OSError, ValueError):
                self._evidence.put(None)  # wakes the thread that passes evidence on
        for thread in self._threads:
            thread.join(STOP_GRACE_SECONDS)
        self._threads.clear()
        for shared in (self._ready, self._evidence):
            if shared is not None:
                shared.close()
                shared.join_thread()
        self._ready = self._evidence = None
        for end in (self._stop_reader, self._stop_writer):
            if end is not None:
                end.close()
        self._stop_reader = self._stop_writer = None
        self._board = None


class RefusalLog:
    """Connections refused by the acceptor: one line, then one per interval with a count."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.interval = interval
        self._since: dict[Refusal, int] = {}
        self._logged: dict[Refusal, float] = {}

    def refused(self, reason: Refusal, peer: str) -> None:
        self._since[reason] = self._since.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged.get(reason, -self.interval) >= self.interval:
            LOG.warning(
                "connection refused before the association",
                reason=reason.value,
                peer=peer,
                refused=self._since.pop(reason),
            )
            self._logged[reason] = now


def recover_spool(spool: Spool, store: StudyStore, settings: Settings) -> int:
    """Index stored files the index does not know, where a crash can have left one (the
    folders of studies unknown or still receiving, :mod:`broker.store.reconcile`); return
    how many were added."""
    started = time.monotonic()
    found = unfinished(store.engine, spool.studies, spool.folder_name)
    added = 0
    for path in found.files():
        if str(path) in found.known_paths:
            continue
        try:
            record = instance_record_from_spooled_file(path)
            if settings.sites:
                sites = settings.site_directory()
                try:  # a study's instances join its site
                    site = store.get_study(record.study_uid).site
                except NotFoundError:  # a new study: its sender's, as when it arrived
                    if not record.calling_ae:  # a file that names no sender: sent again
                        LOG.warning("spooled file of an unknown sender left to its resend")
                        continue
                    site = sites.for_sender(record.calling_ae, record.peer_address)
                record = replace(record, site=site, patient=sites.patient_of(site, record.patient))
            store.record_instance(record, settings.stable_seconds_for(record.called_ae))
            added += 1
        except (InvalidDicomError, StoreError, IdentityConflictError) as exc:
            LOG.error("spooled file cannot be indexed", file=path.name, error=str(exc))
    if added:
        LOG.warning("recovered spooled instances that were not yet indexed", count=added)
    LOG.info(
        "spool reconciled",
        studies=len(found.folders),
        added=added,
        seconds=round(time.monotonic() - started, 3),
    )
    return added
