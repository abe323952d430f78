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
  decoded) as P-DATA-TF PDUs of the peer's maximum length (at most
  :data:`MAX_CHUNK` data bytes each): it is read in large reads (up to
  :data:`BATCH_BYTES`, whole PDUs' worth) into one reused buffer, and each
  batch is written with one scatter-gather call (``socket.sendmsg``) of
  [header, data slice, header, data slice, ...]. The command PDU goes in the
  same call as the data set's first batch, so an instance of up to a batch costs
  one read, one write and the answer's reads. Every PDU of a batch but the
  data set's last has the same 12-byte header, so one header and the buffer's
  slices are made once per context and reused; memory stays one batch
  whatever the file's size;
- the C-STORE-RSP's command set is read from the socket and only Status,
  Error Comment and the message ID answered are taken out of it.

Every write and read waits at most the sender's timeout for progress: a peer
that stops reading mid data set (its receive window full) raises
:class:`StalledError`, one that never answers ``TimeoutError``. A peer that
aborts while the data set is being sent resets the connection, and its
A-ABORT, still readable, names the cause (:class:`DicomError`); so does
anything else it sends instead of the answer (a release request, a malformed
PDU). The caller aborts the association; after a write that failed the
connection is shut down first (the peer may hold part of a PDU, so no A-ABORT
can follow, and a peer that stopped reading would never take one). Messages go one at a time (no
asynchronous operations window is proposed). The socket is plain TCP
(``sendmsg``; radbridge's push offers no TLS).
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pynetdicom.association import Association

from adapters.dicom import dimse
from adapters.dicom.dimse import LAST, P_DATA_TF, PDU, PDV
from adapters.dicom.reactor import EventDrivenDUL
from broker.model.errors import DicomError

#: Data bytes per PDU when the peer announced no maximum length (0: unlimited).
UNLIMITED_CHUNK = 256 * 1024
#: Data bytes per PDU at most, whatever the peer announced (a larger PDU saves nothing).
MAX_CHUNK = 1024 * 1024
#: Data set bytes read and written per call at most (whole PDUs: at least one).
BATCH_BYTES = 1024 * 1024
#: PDUs per write at most: two buffers each, within the kernel's IOV_MAX of 1024.
MAX_PDUS_PER_WRITE = 500


class StalledError(DicomError):
    """The peer took none of the data set for the sender's timeout."""


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
        self.chunk = min(peer_max - PDV.size, MAX_CHUNK) if peer_max else UNLIMITED_CHUNK
        if self.chunk < 1:
            raise DicomError(f"the peer's maximum PDU length {peer_max} holds no data")
        self.pdus_per_batch = max(1, min(BATCH_BYTES // self.chunk, MAX_PDUS_PER_WRITE))
        self._buffer = bytearray(self.chunk * self.pdus_per_batch)
        self._view = view = memoryview(self._buffer)
        self._slices = [
            view[i * self.chunk : (i + 1) * self.chunk] for i in range(self.pdus_per_batch)
        ]
        #: Per context ID: a whole batch of PDUs that are not the data set's last.
        self._full_batches: dict[int, list[Any]] = {}
        self._message_id = 0
        self._sock: Any = None
        #: A write failed: the peer may hold part of a PDU (see give_back).
        self._cut_off = False

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
        """The association's reactor and DUL run again (before anything else is sent).

        After a write that failed, the peer may hold part of a PDU: nothing more can be
        said on that connection (an A-ABORT would be read as the PDU's rest), so it is
        shut down first, and the association's abort ends at once instead of waiting
        for a peer that may never read again."""
        if self._sock is None:
            return
        if self._cut_off:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._sock = None
        self.dul.return_socket()
        cast(Any, self.assoc)._reactor_checkpoint.set()

    def store(
        self, path: Path, offset: int, context_id: int, sop_class: str, sop_instance: str
    ) -> tuple[int, str]:
        """Send the data set of ``path`` (from ``offset``: after its file meta) on the
        presentation context ``context_id``; the answer's Status and Error Comment.
        Raises :class:`DicomError` (the peer broke off), ``TimeoutError`` (no progress
        for the timeout, sending or waiting for the answer) or ``OSError``."""
        if self._sock is None:
            self._borrow()
        self._message_id = self._message_id % 0xFFFF + 1
        command = dimse.command_pdu(
            context_id, dimse.store_request(self._message_id, sop_class, sop_instance)
        )
        self._send_data_set(path, offset, context_id, command)
        return self._answer()

    def _full_batch(self, context_id: int) -> list[Any]:
        parts = self._full_batches.get(context_id)
        if parts is None:
            header = PDU.pack(P_DATA_TF, 0, PDV.size + self.chunk) + PDV.pack(
                2 + self.chunk, context_id, 0
            )
            parts = [piece for data in self._slices for piece in (header, data)]
            self._full_batches[context_id] = parts
        return parts

    def _send_data_set(self, path: Path, offset: int, context_id: int, command: bytes) -> None:
        """The command PDU, then the data set in batches of PDUs (see the module)."""
        with path.open("rb", buffering=0) as file:
            remaining = os.fstat(file.fileno()).st_size - offset
            if remaining < 0:
                raise DicomError(f"{path.name} is shorter than its file meta information")
            file.seek(offset)
            first: list[Any] = [command]
            while True:
                size = min(len(self._buffer), remaining)
                self._read(file, size, path)
                remaining -= size
                if remaining:  # a whole batch, none of it the data set's last PDU
                    full = self._full_batch(context_id)
                    self._write(first + full if first else full)
                else:
                    self._write(first + self._last_batch(size, context_id))
                    return
                first = []

    def _last_batch(self, size: int, context_id: int) -> list[Any]:
        """The PDUs of the data set's last ``size`` bytes (the last one marked last)."""
        chunk = self.chunk
        whole, tail = divmod(size, chunk)
        if tail == 0 and whole:  # the last PDU is a full one
            whole, tail = whole - 1, chunk
        parts = self._full_batch(context_id)[: 2 * whole]
        header = PDU.pack(P_DATA_TF, 0, PDV.size + tail) + PDV.pack(2 + tail, context_id, LAST)
        parts.append(header)
        parts.append(self._view[whole * chunk : whole * chunk + tail])
        return parts

    def _read(self, file: Any, size: int, path: Path) -> None:
        """``size`` bytes of ``file`` into the start of the buffer."""
        got = 0
        while got < size:
            n = file.readinto(self._view[got:size])
            if not n:
                raise DicomError(f"{path.name} ended early while it was being sent")
            got += n

    def _write(self, parts: list[Any]) -> None:
        """All of ``parts`` (see :meth:`_send`); a peer that takes nothing for the timeout
        raises :class:`StalledError`, one that aborted meanwhile :class:`DicomError`."""
        try:
            self._send(parts)
        except BaseException as exc:
            self._cut_off = True  # see give_back
            if isinstance(exc, TimeoutError):
                raise StalledError(
                    f"the peer took no data for {self.timeout:g} s (stalled mid data set)"
                ) from exc
            if isinstance(exc, OSError) and self._aborted():
                raise DicomError(
                    "the peer aborted the association while the data set was being sent"
                ) from None
            raise

    def _send(self, parts: list[Any]) -> None:
        """All of ``parts`` in as few calls as the socket takes (one, usually)."""
        sock = self._sock
        total = sum(map(len, parts))
        sent = sock.sendmsg(parts)
        while sent < total:  # the socket took part: go on from where it stopped
            total -= sent
            at = 0
            while sent >= len(parts[at]):
                sent -= len(parts[at])
                at += 1
            parts = [memoryview(parts[at])[sent:], *parts[at + 1 :]]
            sent = sock.sendmsg(parts)

    def _aborted(self) -> bool:
        """Whether the peer's A-ABORT waits unread (a reset connection still holds it)."""
        try:
            waiting: bytes = self._sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except OSError:
            return False
        return waiting == bytes([dimse.A_ABORT])

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


__all__ = ["BATCH_BYTES", "MAX_CHUNK", "UNLIMITED_CHUNK", "LeanSender", "StalledError"]
