"""The lean C-STORE sender: spooled files to an established association, PDU by PDU.

pynetdicom negotiates the association (:class:`adapters.dicom.client.RequestorAE`);
its ``send_c_store`` then costs about 2 ms of Python per instance, whatever its
size: a command set built as a pydicom Dataset, the data set cut into P-DATA
primitives queued to the DUL thread, each PDU encoded by its PDU classes,
the response decoded into a Dataset and passed back through two queues.

:class:`LeanSender` does the same exchange itself, in the caller's thread,
on the association's socket (borrowed from the DUL, :mod:`adapters.dicom.reactor`):

- the C-STORE-RQ command set is a few bytes of Implicit VR Little Endian
  group 0000 written directly (:mod:`adapters.dicom.dimse`, shared with the
  lean receiver);
- the data set goes from the spool file (its bytes after the file meta, never
  decoded) as P-DATA-TF PDUs of the peer's maximum length, each read into one
  reused buffer behind its 12-byte header and written with one call;
- the C-STORE-RSP's command set is read from the socket and only Status,
  Error Comment and the message ID answered are taken out of it.

Anything else the peer sends meanwhile (an A-ABORT, a release request, a
malformed PDU) raises :class:`DicomError`; the caller aborts the association.
Messages go one at a time (no asynchronous operations window is proposed).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pynetdicom.association import Association

from adapters.dicom import dimse
from adapters.dicom.dimse import HEADER, LAST, P_DATA_TF, PDU, PDV
from adapters.dicom.reactor import EventDrivenDUL
from broker.model.errors import DicomError

#: Data bytes per PDU when the peer announced no maximum length (0: unlimited).
UNLIMITED_CHUNK = 256 * 1024


class LeanSender:
    """C-STOREs of spooled files over an established association (see the module).

    The first :meth:`store` pauses the association's reactor and borrows its
    socket; :meth:`give_back` (or leaving the ``with`` block) returns both, which
    must happen before a release, an abort, or a pynetdicom ``send_c_store``.
    """

    def __init__(self, assoc: Association, timeout: float) -> None:
        dul = assoc.dul
        if not isinstance(dul, EventDrivenDUL):
            raise DicomError("the lean sender needs the event-driven DUL")
        self.assoc = assoc
        self.dul: EventDrivenDUL = dul
        self.timeout = timeout
        peer_max = int(assoc.acceptor.maximum_length or 0)
        self.chunk = peer_max - PDV.size if peer_max else UNLIMITED_CHUNK
        if self.chunk < 1:
            raise DicomError(f"the peer's maximum PDU length {peer_max} holds no data")
        self._buffer = bytearray(HEADER + self.chunk)
        self._message_id = 0
        self._sock: Any = None

    def __enter__(self) -> LeanSender:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.give_back()

    def _borrow(self) -> None:
        # pynetdicom's own pause, as send_c_store does: the reactor takes no message now.
        assoc = cast(Any, self.assoc)
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused and assoc.is_established:
            assoc._reactor_checkpoint.wait(0.0001)
        self._sock = self.dul.lend_socket()
        self._sock.settimeout(self.timeout)

    def give_back(self) -> None:
        """The association's reactor and DUL run again (before anything else is sent)."""
        if self._sock is None:
            return
        self._sock = None
        self.dul.return_socket()
        cast(Any, self.assoc)._reactor_checkpoint.set()

    def store(
        self, path: Path, offset: int, context_id: int, sop_class: str, sop_instance: str
    ) -> tuple[int, str]:
        """Send the data set of ``path`` (from ``offset``: after its file meta) on the
        presentation context ``context_id``; the answer's Status and Error Comment.
        Raises :class:`DicomError` (the peer broke off) or ``OSError``."""
        if self._sock is None:
            self._borrow()
        self._message_id = self._message_id % 0xFFFF + 1
        command = dimse.store_request(self._message_id, sop_class, sop_instance)
        self._sock.sendall(dimse.command_pdu(context_id, command))
        self._send_data_set(path, offset, context_id)
        return self._answer()

    def _send_data_set(self, path: Path, offset: int, context_id: int) -> None:
        buffer = self._buffer
        view = memoryview(buffer)
        with path.open("rb", buffering=0) as file:
            remaining = path.stat().st_size - offset
            file.seek(offset)
            while True:
                size = min(self.chunk, remaining)
                got = 0
                while got < size:
                    n = file.readinto(view[HEADER + got : HEADER + size])
                    if not n:
                        raise DicomError(f"{path.name} ended early while it was being sent")
                    got += n
                remaining -= size
                control = LAST if remaining == 0 else 0
                PDU.pack_into(buffer, 0, P_DATA_TF, 0, PDV.size + size)
                PDV.pack_into(buffer, PDU.size, 2 + size, context_id, control)
                self._sock.sendall(view[: HEADER + size])
                if not remaining:
                    return

    def _receive(self, size: int) -> bytearray:
        data = bytearray()
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise DicomError("the peer closed the connection before answering")
            data += chunk
        return data

    def _answer(self) -> tuple[int, str]:
        """Read PDUs until the C-STORE-RSP's command set is complete; its status."""
        command = bytearray()
        while True:
            pdu_type, _, length = PDU.unpack(self._receive(PDU.size))
            if pdu_type == dimse.A_ABORT:
                raise DicomError("the peer aborted the association")
            if pdu_type != P_DATA_TF:
                raise DicomError(f"the peer sent PDU type 0x{pdu_type:02X} instead of an answer")
            if length > 1 << 20:
                raise DicomError(f"the peer's answer is {length} bytes long")
            body = self._receive(length)
            at = 0
            while at + PDV.size <= len(body):
                item, _context, control = PDV.unpack_from(body, at)
                start, at = at + PDV.size, at + 4 + item
                if item < 2 or at > len(body) or not control & dimse.COMMAND:
                    raise DicomError("the peer's answer is not a command set")
                command += body[start:at]
                if control & LAST:
                    return self._status(dimse.command_fields(command))

    def _status(self, fields: dict[int, bytes]) -> tuple[int, str]:
        if dimse.us(fields, dimse.COMMAND_FIELD) != dimse.C_STORE_RSP:
            raise DicomError("the peer answered a C-STORE with another message")
        if dimse.us(fields, dimse.MESSAGE_ID_BEING_RESPONDED_TO) != self._message_id:
            raise DicomError("the peer answered another message than the C-STORE sent")
        status = dimse.us(fields, dimse.STATUS)
        if status is None:
            raise DicomError("the peer's C-STORE answer has no status")
        comment = fields.get(dimse.ERROR_COMMENT, b"").decode("ascii", "replace").strip(" \0")
        return status, comment


__all__ = ["UNLIMITED_CHUNK", "LeanSender"]
