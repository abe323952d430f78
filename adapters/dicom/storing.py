"""The lean C-STORE receiver: P-DATA fragments straight into the spool file.

pynetdicom negotiates the association and serves every message but the
C-STORE-RQ: through it a C-STORE costs about 1.5 ms of Python whatever its size
(each PDU decoded into PDU, primitive and fragment objects, the command set
into a Dataset, the file meta built as one, the response encoded from a
primitive, all of it passed between two threads through queues).

Once the association is established, the listener's DUL thread
(:class:`adapters.dicom.reactor.EventDrivenDUL`) gives every P-DATA-TF PDU to
a :class:`LeanReceiver` before pynetdicom sees it:

- the command set's fragments are gathered and only the elements a C-STORE
  needs are read (:mod:`adapters.dicom.dimse`);
- a C-STORE-RQ with a data set on an accepted presentation context opens the
  spool's receiving file (:class:`adapters.dicom.receiving.ReceivingFile`:
  low space and a failed write answer 0xA700), writes the preamble and the file
  meta made from the command set and the context's transfer syntax, then each
  data fragment as it arrives, PDU after PDU in this thread, from a reused
  buffer;
- its last fragment closes the file, the service's one C-STORE handler
  (:meth:`adapters.dicom.server.StoreSCP.answer`, with every check of an
  arriving object) makes it durable and gives the status, and the C-STORE-RSP's
  few bytes go straight back on the socket;
- any other message (C-ECHO, MPPS N-CREATE/N-SET, IAN; a C-STORE without a
  data set, on a context that was not accepted or whose SOP class is not its
  context's) is handed to pynetdicom as it came, PDU by PDU, and served by its
  handlers as before (a C-STORE among them by the same handler).

A command fragment in the middle of a data set ends the association with an
A-ABORT. A connection that ends mid-object leaves no file behind
(:meth:`LeanReceiver.abandon`). Messages are taken one at a time, as radbridge
negotiates no asynchronous operations window.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.association import Association
from pynetdicom.status import Status

from adapters.dicom import dimse
from adapters.dicom.dimse import COMMAND, LAST, PDV
from adapters.dicom.receiving import FOLDERS, ReceivingFile
from broker.model.errors import DicomError

#: What the receiver is reading: a command set, a C-STORE's data set, or a message
#: pynetdicom serves (its PDUs handed over until its last data fragment).
_COMMAND, _STORING, _PASSING = "command", "storing", "passing"
_PREAMBLE = b"\0" * 128 + b"DICM"
_META_SHORT = struct.Struct("<HH2sH")
_META_LONG = struct.Struct("<HH2s2xL")
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii")
_IMPLEMENTATION_VERSION = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
#: Value representations padded to an even length with a NUL (the others: a space).
_NULL_PADDED = frozenset({b"OB", b"UI"})
#: Value representations of the meta with a 4-byte length (PS3.5 Table 7.1-1).
_LONG_LENGTH = frozenset({b"OB", b"UR"})


@dataclass(frozen=True)
class Arrival:
    """One C-STORE's data set, received into ``path`` (file meta and all), to be answered."""

    association: Association
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    #: Why the data set could not be written (low space, a failed write), if it was not.
    failure: OSError | None = None
    #: The file as it was written (its first bytes, its size, its descriptor to sync), when
    #: radbridge wrote it.
    file: ReceivingFile | None = None


class Answerer(Protocol):
    """Who decides a C-STORE's status (:class:`adapters.dicom.server.StoreSCP`)."""

    def answer(self, arrival: Arrival) -> Any: ...


def status_of(answer: Any) -> tuple[int, str]:
    """The Status and Error Comment of a handler's answer (an int, or a Dataset with both)."""
    if isinstance(answer, int):
        return answer, ""
    status = int(getattr(answer, "Status", Status.SUCCESS))
    return status, str(getattr(answer, "ErrorComment", "") or "")


def _meta_element(number: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, Explicit VR Little Endian (PS3.10 7.1)."""
    if len(value) % 2:
        value += b"\0" if vr in _NULL_PADDED else b" "
    if vr in _LONG_LENGTH:
        return _META_LONG.pack(0x0002, number, vr, len(value)) + value
    return _META_SHORT.pack(0x0002, number, vr, len(value)) + value


def file_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, sender: bytes = b""
) -> bytes:
    """Preamble, prefix and File Meta Information of a received object: the bytes
    pynetdicom's ``create_file_meta`` and pydicom's ``write_file_meta_info`` make, at a
    hundredth of their cost (the same bytes: ``tests/unit/test_lean_dimse.py``), with
    ``sender`` (:func:`sender_meta`) last."""
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\0\1"),
            _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace")),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace")),
            _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii")),
            _meta_element(0x0012, b"UI", _IMPLEMENTATION_UID),
            _meta_element(0x0013, b"SH", _IMPLEMENTATION_VERSION),
            sender,
        )
    )
    length = _meta_element(0x0000, b"UL", struct.pack("<L", len(body)))
    return _PREAMBLE + length + body


def sender_meta(calling_ae: str, called_ae: str, address: str) -> bytes:
    """The file meta elements that name who sent a received object, and to which AE title
    (PS3.10 Table 7.1-1: Sending and Receiving Application Entity Title, Sending
    Presentation Address as ``dicom://ADDRESS``, without the connection's passing port: an
    object sent again by the same sender is the same file): the spool file then holds all the
    index records of its arrival but the time (:func:`adapters.dicom.mapping.sender_of`)."""
    host = f"[{address}]" if ":" in address else address
    return b"".join(
        (
            _meta_element(0x0017, b"AE", calling_ae.strip().encode("ascii", "replace")),
            _meta_element(0x0018, b"AE", called_ae.strip().encode("ascii", "replace")),
            _meta_element(0x0027, b"UR", f"dicom://{host}".encode("ascii", "replace")),
        )
    )


def _check_tiling(pdu: memoryview) -> None:
    """Raise :class:`DicomError` unless the PDU's presentation data values fill it exactly
    (checked before any of them is acted on: a PDU that swallowed the next one's head must
    not have its C-STORE answered)."""
    at, end = dimse.PDU.size, len(pdu)
    while at < end:
        if at + PDV.size > end:
            raise DicomError("a P-DATA-TF holds bytes after its last presentation data value")
        length = PDV.unpack_from(pdu, at)[0]
        at += 4 + length
        if length < 2 or at > end:
            raise DicomError("a presentation data value overruns its PDU")


class LeanReceiver:
    """C-STOREs of one association (see the module); used by its DUL thread alone.

    ``send`` writes bytes to the peer; ``refuse`` A-ABORTs the association for a
    protocol error (a reason of PS3.8 Table 9-26 and a description).
    """

    def __init__(
        self,
        assoc: Association,
        scp: Answerer,
        send: Callable[[bytes], None],
        refuse: Callable[[str], None],
    ) -> None:
        self.assoc = assoc
        self.scp = scp
        self.send = send
        self.refuse = refuse
        self._mode = _COMMAND
        self._command = bytearray()
        self._held: list[bytearray] = []
        self._file: ReceivingFile | None = None
        self._request: dict[int, bytes] = {}
        self._context_id = 0
        self._transfer_syntax = ""
        #: This association's folder for the files it receives (:class:`Folders`).
        self._folder: str | None = None
        self._sender_meta: bytes | None = None

    @property
    def storing(self) -> bool:
        """A C-STORE's data set is being received: its next PDUs are P-DATA for it."""
        return self._mode == _STORING

    def take(self, pdu: memoryview) -> list[bytearray]:
        """Take one whole P-DATA-TF PDU (header included); the PDUs pynetdicom must now
        decode, in order (none while a C-STORE is being received)."""
        if self._mode == _PASSING:
            self._passing(pdu, dimse.PDU.size)
            return [bytearray(pdu)]
        _check_tiling(pdu)
        at, end = dimse.PDU.size, len(pdu)
        while at + PDV.size <= end:
            length, context_id, control = PDV.unpack_from(pdu, at)
            start, at = at + PDV.size, at + 4 + length
            if length < 2 or at > end:
                raise DicomError("a presentation data value overruns its PDU")
            if self._mode == _STORING:
                if control & COMMAND:
                    self.refuse("a command fragment arrived inside a C-STORE's data set")
                    self._drop()
                    return []
                self._write(pdu[start:at], last=bool(control & LAST))
                continue
            if not control & COMMAND:  # a data set without its command: pynetdicom's to judge
                return self._hand_over(pdu)
            self._command += pdu[start:at]
            if not control & LAST:
                continue
            handed = self._begin(context_id, pdu, at)
            if handed is not None:
                return handed
        if self._mode == _COMMAND and self._command:
            self._held.append(bytearray(pdu))  # a command set continues in the next PDU
        return []

    def _hand_over(self, pdu: memoryview) -> list[bytearray]:
        held, self._held = [*self._held, bytearray(pdu)], []
        self._command.clear()
        return held

    def _begin(self, context_id: int, pdu: memoryview, after: int) -> list[bytearray] | None:
        """The command set is complete: start receiving a C-STORE's data set (None), or
        hand the message to pynetdicom (its PDUs)."""
        fields = dimse.command_fields(self._command)
        context = self.assoc._accepted_cx.get(context_id)
        has_data = dimse.us(fields, dimse.COMMAND_DATA_SET_TYPE) != dimse.NO_DATA_SET
        sop_class = dimse.uid(fields, dimse.AFFECTED_SOP_CLASS_UID)
        if (
            dimse.us(fields, dimse.COMMAND_FIELD) != dimse.C_STORE_RQ
            or not has_data
            or context is None
            or str(context.abstract_syntax) != sop_class
        ):
            handed = self._hand_over(pdu)
            if has_data:
                self._mode = _PASSING
                self._passing(pdu, after)
            return handed
        self._held.clear()
        self._command.clear()
        self._request = fields
        self._context_id = context_id
        self._transfer_syntax = str(context.transfer_syntax[0])
        if self._folder is None:
            with contextlib.suppress(OSError):  # a full disk: the file fails, and is answered
                self._folder = FOLDERS.take()
        self._file = ReceivingFile(".dcm", self._folder)
        self._file.write(
            file_header(
                sop_class,
                dimse.uid(fields, dimse.AFFECTED_SOP_INSTANCE_UID),
                self._transfer_syntax,
                self._sender(),
            )
        )
        self._mode = _STORING
        return None

    def _sender(self) -> bytes:
        """The association's :func:`sender_meta` (made once)."""
        if self._sender_meta is None:
            requestor = self.assoc.requestor
            primitive = requestor.primitive
            called = str(primitive.called_ae_title) if primitive is not None else ""
            self._sender_meta = sender_meta(requestor.ae_title, called, requestor.address)
        return self._sender_meta

    def _passing(self, pdu: memoryview, at: int) -> None:
        """Follow a message pynetdicom serves until its last data fragment."""
        end = len(pdu)
        while at + PDV.size <= end:
            length, _context_id, control = PDV.unpack_from(pdu, at)
            at += 4 + length
            if not control & COMMAND and control & LAST:
                self._mode = _COMMAND
                return

    def _write(self, data: memoryview, last: bool) -> None:
        spooled = self._file
        assert spooled is not None
        spooled.write(data)
        if last:
            self._finish(spooled)

    def _finish(self, spooled: ReceivingFile) -> None:
        """The data set is in: answer it (durably stored, or refused) and send the answer."""
        spooled.finish()
        self._file = None
        self._mode = _COMMAND
        fields = self._request
        arrival = Arrival(
            association=self.assoc,
            sop_class_uid=dimse.uid(fields, dimse.AFFECTED_SOP_CLASS_UID),
            sop_instance_uid=dimse.uid(fields, dimse.AFFECTED_SOP_INSTANCE_UID),
            transfer_syntax_uid=self._transfer_syntax,
            path=Path(spooled.name),
            failure=spooled.failure,
            file=spooled,
        )
        try:
            status, comment = status_of(self.scp.answer(arrival))
        finally:
            spooled.discard()  # closed; removed unless it was placed
        response = dimse.store_response(
            dimse.us(fields, dimse.MESSAGE_ID) or 0,
            fields.get(dimse.AFFECTED_SOP_CLASS_UID, b""),
            fields.get(dimse.AFFECTED_SOP_INSTANCE_UID, b""),
            status,
            comment,
        )
        self.send(dimse.command_pdu(self._context_id, response))

    def _drop(self) -> None:
        spooled, self._file = self._file, None
        self._mode = _COMMAND
        if spooled is not None:
            spooled.discard()

    def abandon(self) -> bool:
        """The connection ended: remove a data set it left unfinished; True if there was one."""
        unfinished = self._file is not None
        self._drop()
        if self._folder is not None:
            FOLDERS.give_back(self._folder)
            self._folder = None
        return unfinished


__all__ = ["Answerer", "Arrival", "LeanReceiver", "file_header", "sender_meta", "status_of"]
