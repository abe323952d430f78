"""The DICOM SCP of one listener process: C-ECHO, and C-STORE into the durable spool.

Several listener processes run this SCP; the supervisor in
``adapters.dicom.listener`` accepts each connection and hands it to the least
busy of them, so ingest is not bound by one interpreter's GIL.

A C-STORE success status goes back only after the bytes are fsync'd in the
spool and the index row is committed; any failure answers a failure status
and leaves nothing half-stored: a full disk 0xA700 (the data set is read to
its end and dropped, the association goes on), anything unforeseen 0xA700 or
0xC000, never an exception for pynetdicom to turn into 0xC211.

pynetdicom negotiates each association and serves C-ECHO, MPPS and IAN; the
C-STOREs are read by the lean receiver in the connection's DUL thread
(:mod:`adapters.dicom.storing`), which writes their data sets straight into the
spool and asks :meth:`StoreSCP.answer` for the status: the one place an
arriving object is checked, stored, indexed and answered.

Each connection holds a :class:`~adapters.dicom.slots.Lease` from the moment
the acceptor hands it over: pending until its A-ASSOCIATE-RQ passes the
policy, then an association; the thread that owns the connection gives it
back when it ends (:mod:`adapters.dicom.reactor`).
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import traceback
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import _STORAGE_CLASSES, Verification  # type: ignore[attr-defined]
from pynetdicom.status import Status
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from adapters.dicom import log_budget, receiving
from adapters.dicom.mapping import instance_record_from_file
from adapters.dicom.notices import NOTICE_CLASSES, NoticeSCP
from adapters.dicom.policy import AssociationPolicy, Reject
from adapters.dicom.reactor import EventDrivenDUL, install, report_abort
from adapters.dicom.rejection import KEY_OBJECT_SELECTION, rejection_note_from_file
from adapters.dicom.slots import Lease, ProcessSlots
from adapters.dicom.storing import Arrival, LeanReceiver
from adapters.dicom_status import StoreFailure
from adapters.results.intake import ResultIntake
from adapters.tls import server_context
from broker.model.domain import ResultOrigin
from broker.model.errors import InvalidDicomError, SpoolError, StoreError
from broker.model.identity import ConflictKind, IdentityConflictError
from broker.model.logging import get_logger
from broker.store import StudyStore
from broker.store.corrections import CorrectionStore
from broker.store.group_commit import GroupCommit
from broker.store.notices import NoticeStore
from broker.store.space import SpaceWatch
from broker.store.spool import Spool
from config.schema import AERole, Settings

LOG = get_logger("radbridge.dicom")


class _Flush:
    """A received file's fdatasync, run once, when the answer first needs it (a refused
    object is never synced), through the descriptor the file was written with while it is
    open; most of the file is on its way to the disk by then
    (:func:`adapters.dicom.receiving.start_write_back`)."""

    def __init__(self, spool: Spool, arrival: Arrival) -> None:
        self._spool, self._arrival, self._done = spool, arrival, False

    def __call__(self) -> None:
        if self._done:
            return
        spooled = self._arrival.file
        self._spool.flush(self._arrival.path, None if spooled is None else spooled.fileno())
        self._done = True


#: Transfer syntaxes accepted for storage, in no particular preference: the
#: requestor's first proposed syntax that is listed here is the one used.
TRANSFER_SYNTAXES: list[str | bytes | UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    UID("1.2.840.10008.1.2.4.201"),  # HTJ2K lossless
    UID("1.2.840.10008.1.2.4.202"),  # HTJ2K lossless RPCL
    UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
    UID("1.2.840.10008.1.2.4.100"),  # MPEG2 main profile
    UID("1.2.840.10008.1.2.4.102"),  # MPEG-4 AVC/H.264 high profile
    UID("1.2.840.10008.1.2.4.107"),  # HEVC/H.265 Main Profile
    UID("1.2.840.10008.1.2.4.108"),  # HEVC/H.265 Main 10 Profile
    UID("1.2.840.10008.1.2.4.110"),  # JPEG XL Lossless
]


class _SharedContexts(list[PresentationContext]):
    """The supported contexts, shared by every association instead of deep-copied.

    pynetdicom deep-copies the acceptor's contexts for each association (171
    SOP classes by 19 syntaxes: about 10 ms); negotiation only reads them.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class and Verification, each with every accepted syntax; MPPS and
    IAN with the uncompressed ones."""
    contexts = _SharedContexts()
    for uid in [Verification, *_STORAGE_CLASSES.values()]:
        cx = PresentationContext()
        cx.abstract_syntax = uid
        cx.transfer_syntax = TRANSFER_SYNTAXES
        contexts.append(cx)
    for uid in NOTICE_CLASSES:
        cx = PresentationContext()
        cx.abstract_syntax = uid
        cx.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        contexts.append(cx)
    return contexts


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _any_uid(value: Any) -> tuple[bool, str]:
    """pynetdicom's check of a command's UIDs, turned off: over a C-STORE request whose
    Affected SOP Instance UID is longer than 64 characters it aborts the association; the
    handler answers 0xC000 naming the attribute instead (:mod:`adapters.dicom_uid`)."""
    return True, ""


#: The Error Comment (64 characters at most) of each identity conflict a C-STORE gets.
IDENTITY_COMMENTS = {
    ConflictKind.STUDY_PATIENT: "study is held for another patient; not stored",
    ConflictKind.STUDY_SITE: "study is held for another site; not stored",
    ConflictKind.INSTANCE_STUDY: "SOP Instance UID held in another study/series; not stored",
    ConflictKind.SERIES_STUDY: "Series Instance UID held in another study; not stored",
    ConflictKind.RESULT_PATIENT: "result names another patient than its study",
    ConflictKind.RESULT_STUDY: "result is of another study than its job",
}


def _identity_refused(exc: IdentityConflictError, log: Any) -> Dataset:
    """0xC409 for an object that names another patient (or study) than radbridge holds."""
    kind = exc.report.kind
    log.warning(
        "c-store refused: identity conflict",
        kind=kind.value,
        problem=str(exc),
        patient_id=exc.report.claimed.patient_id,  # redacted unless logging.phi is on
        study_uid=exc.report.study_uid,
    )
    comment = IDENTITY_COMMENTS.get(kind, "identity conflict; not stored")
    return _status(StoreFailure.IDENTITY_CONFLICT, comment)


class Gatekeeper(ACSE):
    """ACSE that applies radbridge's association policy before negotiating."""

    policy: AssociationPolicy
    lease: Lease

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None
        self.requestor.ae_title = request.calling_ae_title  # for the lines below
        address = self.assoc.requestor.address
        reject = self.policy.check(
            str(request.called_ae_title), str(request.calling_ae_title), address
        )
        if reject is None and not self.lease.promote():  # counted only once its request is in
            reject = Reject.LOCAL_LIMIT_EXCEEDED
        if self.lease.released or self.is_aborted():
            # The DUL ended the connection before this answer: P-DATA came first (it sent an
            # A-ABORT, PS3.8 AA-8) or the peer went away. Nothing is left to answer; and its
            # slot may be given back already, which says nothing of the limit.
            report_abort(self.assoc)
            self.assoc.kill()
            return
        if reject is None:
            super()._negotiate_as_acceptor()
            return
        LOG.warning(
            "association rejected",
            reason=reject.name.lower(),
            calling_ae=str(request.calling_ae_title),
            called_ae=str(request.called_ae_title),
            peer=address,
        )
        self.send_reject(*reject.value)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class _Handler(RequestHandler):
    lease: Lease

    def handle(self) -> None:
        """Start the association thread, which owns the connection (and its lease) from then."""
        server = self.server
        assert isinstance(server, ListenerServer)
        self.lease = server.leases.pop(self.request)
        try:
            super().handle()
        except BaseException:
            self.lease.release()
            raise

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        install(assoc)
        setattr(assoc, "owner", self.lease)  # noqa: B010 - released when its threads end
        server = self.server
        assert isinstance(server, ListenerServer)
        dul = cast(EventDrivenDUL, assoc.dul)
        dul.lean = LeanReceiver(assoc, server.scp, dul.send_now, dul.protocol_error)
        gatekeeper = Gatekeeper(assoc)
        gatekeeper.policy = server.policy
        gatekeeper.lease = self.lease
        assoc.acse = gatekeeper
        return assoc


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, fed with connections the supervisor accepted.

    It never binds or listens itself: ``adapters.dicom.listener`` owns the
    port and hands each accepted connection to the least busy listener
    process, which passes it to ``take``.
    """

    policy: AssociationPolicy
    load: ProcessSlots
    scp: StoreSCP
    #: Connections taken but not yet picked up by their handler thread, with their lease.
    leases: dict[Any, Lease]

    def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded configuration to the associations that open from now on:
        called AE titles and roles, peers, limits, timeouts, stable times, and the
        vendors' results AE titles and policies (listen address, TLS and the number of
        processes need a restart)."""
        dicom = settings.dicom
        self.policy = AssociationPolicy.from_settings(settings)
        self.ae.maximum_associations = dicom.max_associations + dicom.max_pending_connections + 1
        self.ae.maximum_pdu_size = dicom.max_pdu_size
        self.ae.network_timeout = dicom.network_timeout
        self.ae.acse_timeout = dicom.request_timeout
        self.ae.dimse_timeout = dicom.network_timeout
        self.scp.settings = settings
        LOG.info("listener process reconfigured", pid=os.getpid(), slot=self.load.slot)

    def server_bind(self) -> None:
        """No bind: the supervisor owns the listening socket."""

    def server_activate(self) -> None:
        """No listen: connections arrive through ``take``."""

    def take(self, conn: socket.socket) -> None:
        """Serve one accepted connection (admitted on the slot board) in a new thread."""
        lease = self.load.lease(conn)  # from here the connection's slot is ours to give back
        try:
            address = conn.getpeername()
            # Every read has its own deadline (adapters.dicom.reactor); this bounds the rest.
            conn.settimeout(float(self.ae.acse_timeout or 30.0))
            if self.ssl_context is not None:
                # The handshake happens on first read, in the association thread.
                conn = self.ssl_context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
            self.leases[conn] = lease
            self.process_request(conn, address)
        except (OSError, ssl.SSLError, RuntimeError) as exc:  # RuntimeError: no thread
            LOG.warning("connection dropped before the association", error=str(exc))
            self.leases.pop(conn, None)
            lease.release()
            conn.close()


def _ignore_report(_study_uids: list[str]) -> None:
    return None


class StoreSCP:
    """Event handlers of one listener process.

    ``report`` tells the service which studies to judge for completion now: those an
    association stored instances of, when it ends; those an MPPS or IAN names.
    """

    def __init__(
        self,
        settings: Settings,
        store: StudyStore,
        spool: Spool,
        report: Callable[[list[str]], object] = _ignore_report,
    ) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.report = report
        self.notices = NoticeSCP(lambda: self.settings, NoticeStore(store.engine), report)
        self.results = ResultIntake(lambda: self.settings, store.engine, spool)
        self.corrections = CorrectionStore(store.engine)
        self.commits = GroupCommit(store)
        self.space = SpaceWatch(spool.root, self._min_free_bytes, interval=0.0)  # each C-STORE

    def _min_free_bytes(self, total: int) -> int:
        return self.settings.storage.min_free_bytes(total)  # the configuration in force

    def refusal(self) -> str | None:
        """Why no new data set is written now: the spool's free space is low (else None)."""
        space = self.space.current()
        return space.describe() if space.low else None

    def _log(self, assoc: Association) -> Any:
        primitive = assoc.requestor.primitive
        return LOG.bind(
            association_id=getattr(assoc, "radbridge_id", None),
            calling_ae=assoc.requestor.ae_title,
            called_ae=str(primitive.called_ae_title) if primitive else None,
            peer=assoc.requestor.address,
        )

    def on_echo(self, event: evt.Event) -> int:
        self._log(event.assoc).info("c-echo")
        return Status.SUCCESS

    def ingest(self, arrival: Arrival, log: Any) -> int | Dataset:
        """Make an arrived C-STORE's data set durable and indexed; its status."""
        assoc = arrival.association
        primitive = assoc.requestor.primitive
        called_ae = str(primitive.called_ae_title).strip() if primitive else ""
        tmp = arrival.path
        final: Path | None = None
        existed = placing = False
        flushing = _Flush(self.spool, arrival)
        spooled = arrival.file
        settings = self.settings  # one configuration for the whole C-STORE
        called = settings.dicom.ae_titles.get(called_ae)
        if called is not None and called.role is AERole.RESULTS:
            return self._store_result(arrival, flushing, log)
        if arrival.sop_class_uid == KEY_OBJECT_SELECTION:
            answer = self._rejection(assoc, tmp, log)
            if answer is not None:
                return answer
        sites = settings.site_directory()
        site = sites.for_sender(assoc.requestor.ae_title, assoc.requestor.address)
        try:
            record = instance_record_from_file(
                tmp,
                sop_class_uid=arrival.sop_class_uid,
                sop_instance_uid=arrival.sop_instance_uid,
                transfer_syntax_uid=arrival.transfer_syntax_uid,
                calling_ae=assoc.requestor.ae_title.strip(),
                called_ae=called_ae,
                peer_address=assoc.requestor.address,
                received_at=datetime.now(UTC),
                wants_series_tags=self.store.wants_series_tags,
                site=site,
                header=None if spooled is None else spooled.header(),
                size=None if spooled is None else spooled.size,
            )
            final = self.spool.path_for(
                record.study_uid, record.series_uid, record.sop_instance_uid
            )
            record = replace(
                record, patient=sites.patient_of(site, record.patient), path=str(final)
            )
            if final.exists():  # a resend: refuse another patient before its copy is replaced
                self.store.check_instance(record)
            flushing()
            placing = True  # from here a failure removes what was placed (unless it existed)
            with self.spool.study_lock(record.study_uid):  # a retention purge waits
                existed, folders = self.spool.rename_into_place(tmp, final)
                if spooled is not None:
                    spooled.placed()
                indexed = self.commits.record(  # durable with the other associations'
                    record,
                    settings.stable_seconds_for(called_ae),
                    folders,
                )
            if indexed.previous_path:
                self.spool.discard(Path(indexed.previous_path))
        except IdentityConflictError as exc:
            if final is not None and placing and not existed:
                self._discard_quietly(final)
            return _identity_refused(exc, log)
        except InvalidDicomError as exc:
            log.warning("c-store refused: cannot understand", error=str(exc))
            return _status(StoreFailure.CANNOT_UNDERSTAND, str(exc))
        except (SpoolError, StoreError, OSError) as exc:
            log.error("c-store failed: not stored", error=str(exc))
            if final is not None and placing and not existed:
                self._discard_quietly(final)
            return _status(StoreFailure.OUT_OF_RESOURCES, "not stored: " + type(exc).__name__)
        stored: set[str] = getattr(assoc, "radbridge_studies", set())
        stored.add(record.study_uid)
        log.info(
            "c-store",
            study_uid=record.study_uid,
            sop_instance_uid=record.sop_instance_uid,
            size=record.size,
            replaced=indexed.replaced,
            study_state=indexed.study_state.value,
        )
        return Status.SUCCESS

    def _rejection(self, assoc: Association, tmp: Path, log: Any) -> int | Dataset | None:
        """An IOCM Rejection Note: the results made from what it rejects are corrected
        (:class:`broker.store.corrections.CorrectionStore`), recorded before the answer;
        None when the KOS is no rejection note (stored as any instance)."""
        try:
            note = rejection_note_from_file(tmp)
        except InvalidDicomError as exc:
            log.warning("rejection note refused: cannot understand", error=str(exc))
            return _status(StoreFailure.CANNOT_UNDERSTAND, str(exc))
        if note is None:
            return None
        calling_ae = assoc.requestor.ae_title.strip()
        try:
            made = self.corrections.record_rejection(
                note, source=f"C-STORE from {calling_ae}", peer=assoc.requestor.address
            )
        except StoreError as exc:
            log.error("rejection note failed: not recorded", error=str(exc))
            return _status(StoreFailure.OUT_OF_RESOURCES, "not stored: " + type(exc).__name__)
        self._discard_quietly(tmp)
        log.info(
            "rejection note",
            study_uid=note.study_uid,
            reason=f"{note.reason.system}:{note.reason.value}",
            series=len(note.series),
            instances=note.instance_count,
            corrections=[d.id for d in made],
        )
        return Status.SUCCESS

    def _store_result(self, arrival: Arrival, flushing: _Flush, log: Any) -> int | Dataset:
        """A vendor's result object: into ``results/`` and the results store, never the index."""
        requestor = arrival.association.requestor
        calling_ae = requestor.ae_title.strip()
        try:
            stored = self.results.store_file(
                arrival.path,
                origin=ResultOrigin.DICOM,
                vendors=self.results.vendors_for_ae(calling_ae),
                transfer_syntax_uid=arrival.transfer_syntax_uid,
                sop_instance_uid=arrival.sop_instance_uid,
                sop_class_uid=arrival.sop_class_uid,
                calling_ae=calling_ae,
                peer_address=requestor.address,
                flush=flushing,
            )
        except IdentityConflictError as exc:
            return _identity_refused(exc, log)
        except InvalidDicomError as exc:
            log.warning("result c-store refused: cannot understand", error=str(exc))
            return _status(StoreFailure.CANNOT_UNDERSTAND, str(exc))
        except (SpoolError, StoreError, OSError) as exc:
            log.error("result c-store failed: not stored", error=str(exc))
            return _status(StoreFailure.OUT_OF_RESOURCES, "not stored: " + type(exc).__name__)
        recorded = stored.recorded
        log.info(
            "result c-store",
            study_uid=stored.header.study_uid,
            sop_instance_uid=stored.header.sop_instance_uid,
            size=stored.size,
            result_id=recorded.result_id,
            job_id=recorded.job_id,
            orphan=recorded.job_id is None,
            duplicate=recorded.duplicate,
        )
        return Status.SUCCESS

    def _discard_quietly(self, path: Path) -> None:
        try:
            self.spool.discard(path)
        except SpoolError as exc:
            LOG.error("cannot remove a file that was not acknowledged", error=str(exc))

    def on_open(self, event: evt.Event) -> None:
        setattr(event.assoc, "radbridge_id", uuid.uuid4().hex[:12])  # noqa: B010
        setattr(event.assoc, "radbridge_studies", set())  # noqa: B010

    def on_close(self, event: evt.Event) -> None:
        """Report the studies the association stored instances of (their series are in, as
        far as this sender goes); remove the temporary file of a C-STORE the peer
        abandoned mid-transfer."""
        stored = getattr(event.assoc, "radbridge_studies", None)
        if stored:
            try:
                self.report(sorted(stored))
            except Exception as exc:  # the quiet timer still closes them
                self._log(event.assoc).warning(
                    "studies not reported for completion", error=str(exc)
                )
        message = getattr(event.assoc.dimse, "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is not None:
            partial.close()
            self._discard_quietly(Path(partial.name))
            self._log(event.assoc).warning("association ended mid-transfer; partial object removed")

    def on_aborted(self, event: evt.Event) -> None:
        self._log(event.assoc).warning("association aborted")

    def on_store_answering(self, event: evt.Event) -> int | Dataset:
        """pynetdicom's EVT_C_STORE: a C-STORE the lean receiver left to pynetdicom
        (:mod:`adapters.dicom.storing`), answered by :meth:`answer` all the same."""
        request = cast(C_STORE, event.request)
        spooled = receiving.file_of(request)
        arrival = Arrival(
            association=event.assoc,
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            path=Path(event.dataset_path),
            failure=None if spooled is None else spooled.failure,
            file=spooled,
        )
        return self.answer(arrival)

    def answer(self, arrival: Arrival) -> int | Dataset:
        """:meth:`ingest`, with the answers no exception may take away.

        A data set the spool could not take (no space, I/O error) gets 0xA700
        before anything reads it; its file was cut to nothing as the write
        failed, and the receiver removes it. An exception that escapes
        :meth:`ingest` becomes a failure status and one log line, not pynetdicom's
        0xC211 with a traceback; the temporary file is removed all the same.
        """
        failure = arrival.failure
        log = self._log(arrival.association)
        if isinstance(failure, receiving.LowSpaceError):
            log.warning("c-store refused: free space low", reason=failure.strerror)
            return _status(
                StoreFailure.OUT_OF_RESOURCES,
                "out of resources: spool full (free space below storage.min_free_space)",
            )
        if failure is not None:
            log.error(
                "c-store refused: the spool cannot take it",
                error=failure.strerror,
                no_space=failure.errno in receiving.NO_SPACE,
            )
            if failure.errno in receiving.NO_SPACE:
                return _status(StoreFailure.OUT_OF_RESOURCES, "out of resources: spool full")
            return _status(StoreFailure.OUT_OF_RESOURCES, "out of resources: spool write failed")
        try:
            return self.ingest(arrival, log)
        except RecursionError:
            log.warning("c-store refused: sequences nested too deeply")
            return _status(StoreFailure.CANNOT_UNDERSTAND, "sequences nested too deeply to be read")
        except Exception as exc:  # the message may quote the data set: log where, not what
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else None
            log.error(
                "c-store failed: unexpected error", error_type=type(exc).__name__, where=where
            )
            return _status(StoreFailure.OUT_OF_RESOURCES, "not stored: " + type(exc).__name__)

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store_answering),
            (evt.EVT_CONN_OPEN, self.on_open),
            (evt.EVT_CONN_CLOSE, self.on_close),
            (evt.EVT_ABORTED, self.on_aborted),
            *self.notices.handlers(),
        ]


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.dicom.tls
    return server_context(tls, setting="dicom.tls") if tls is not None else None


def make_server(
    settings: Settings,
    store: StudyStore,
    spool: Spool,
    load: ProcessSlots,
    report: Callable[[list[str]], object] = _ignore_report,
) -> ListenerServer:
    """This process's SCP; feed it accepted connections with ``ListenerServer.take``;
    ``report`` hears of the studies to judge for completion (:class:`StoreSCP`)."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.VALIDATORS["UI"] = _any_uid  # the handler refuses a bad UID, by name
    tempfile.tempdir = str(spool.tmp)  # pynetdicom streams each C-STORE into spool/tmp
    scp = StoreSCP(settings, store, spool, report)
    receiving.install(scp.refusal)  # ... through a file that survives a full disk
    log_budget.install()
    dicom = settings.dicom
    ae = AE(ae_title=next(iter(dicom.ae_titles)))
    # The slot board enforces the limits; pynetdicom's own count includes pending ones.
    ae.maximum_associations = dicom.max_associations + dicom.max_pending_connections + 1
    ae.maximum_pdu_size = dicom.max_pdu_size
    ae.network_timeout = dicom.network_timeout
    ae.acse_timeout = dicom.request_timeout  # the ARTIM timer: shorter than the network's
    ae.dimse_timeout = dicom.network_timeout
    ae.require_called_aet = False
    server = ae.make_server(
        (dicom.listen.host, dicom.listen.port),
        ae_title=ae.ae_title,
        contexts=storage_contexts(),
        ssl_context=tls_context(settings),
        evt_handlers=scp.handlers(),
        server_class=ListenerServer,
        request_handler=_Handler,
    )
    assert isinstance(server, ListenerServer)
    server.policy = AssociationPolicy.from_settings(settings)
    server.load = load
    server.leases = {}
    server.scp = scp
    LOG.info("listener process ready", pid=os.getpid(), slot=load.slot)
    return server
