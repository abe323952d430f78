"""A scripted misbehaving DICOM peer: one TCP connection, a script, a report of what came back.

pynetdicom's ``parrot.py`` is the model: it replays recorded PDUs, broken ones
included. This peer is the requestor's side of that: it connects to a listener
and plays steps (raw bytes, a PDU header announcing four gigabytes, a long
silence, a valid association, C-STOREs of crafted data sets, garbage) and keeps
every PDU the listener sent back, whether and how the listener closed the
connection, and the DIMSE statuses it answered.

    peer = HostilePeer(port)
    report = peer.play([Send(header(0x01, 0xFFFFFFF0)), Stream(64 << 20), AwaitClose(10)])
    assert report.closed and report.bytes_sent < 64 << 20

Waits are bounded by deadlines; nothing sleeps for a fixed time except ``Idle``,
which is the point of it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from adapters.harness.hostile import pdu as pdus
from adapters.harness.hostile.pdu import Pdu, PduType, Response


@dataclass(frozen=True)
class Send:
    """Raw bytes, as given."""

    data: bytes


@dataclass(frozen=True)
class Stream:
    """``total`` bytes of ``fill``, sent until done or the listener stops taking them."""

    total: int
    fill: bytes = b"\0"


@dataclass(frozen=True)
class Idle:
    """Say nothing for ``seconds`` (whatever arrives meanwhile is kept)."""

    seconds: float


@dataclass(frozen=True)
class Associate:
    called_ae: str = "RADBRIDGE"
    calling_ae: str = "HOSTILE"
    contexts: Sequence[tuple[str, Sequence[str]]] = (
        (pdus.VERIFICATION, (pdus.IMPLICIT_VR_LITTLE_ENDIAN,)),
    )
    max_pdu: int = 16384


@dataclass(frozen=True)
class Store:
    """A C-STORE of ``dataset`` (bytes in the context's transfer syntax)."""

    dataset: bytes
    sop_class_uid: str
    sop_instance_uid: str
    context_id: int = 1


@dataclass(frozen=True)
class Echo:
    context_id: int = 1


@dataclass(frozen=True)
class Release:
    pass


@dataclass(frozen=True)
class AwaitClose:
    """Wait up to ``timeout`` seconds for the listener to close the connection."""

    timeout: float


@dataclass(frozen=True)
class Close:
    pass


Step = Send | Stream | Idle | Associate | Store | Echo | Release | AwaitClose | Close


@dataclass
class PeerReport:
    """What came back while a script played."""

    pdus: list[Pdu] = field(default_factory=list)
    responses: list[Response | None] = field(default_factory=list)
    bytes_sent: int = 0
    closed: bool = False
    """The listener closed the connection (end of file or reset)."""
    reset: bool = False
    send_failed: bool = False
    """A send found the connection closed, reset, or not read for the peer's timeout."""

    def of_type(self, pdu_type: int) -> list[Pdu]:
        return [p for p in self.pdus if p.type == pdu_type]

    @property
    def accepted(self) -> bool:
        return bool(self.of_type(PduType.A_ASSOCIATE_AC))

    @property
    def rejected(self) -> tuple[int, int, int] | None:
        rejects = self.of_type(PduType.A_ASSOCIATE_RJ)
        return rejects[0].reject if rejects else None

    @property
    def aborted(self) -> bool:
        return bool(self.of_type(PduType.A_ABORT))

    @property
    def statuses(self) -> list[int | None]:
        return [r.status if r is not None else None for r in self.responses]


class HostilePeer:
    """One connection to a DICOM listener, driven step by step or by ``play``."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        source: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.source = source
        self.timeout = timeout
        self.report = PeerReport()
        self.max_pdu = 16384
        self._sock: socket.socket | None = None
        self._inbox = bytearray()
        self._message_id = 0

    # -- connection ---------------------------------------------------------------

    def connect(self) -> HostilePeer:
        self._sock = socket.create_connection(
            (self.host, self.port),
            timeout=self.timeout,
            source_address=(self.source, 0) if self.source else None,
        )
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def reconnect(self) -> HostilePeer:
        """Close, and connect again with nothing received yet (a fresh report)."""
        self.close()
        self.report = PeerReport()
        self._inbox.clear()
        self._message_id = 0
        return self.connect()

    @property
    def sock(self) -> socket.socket:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> HostilePeer:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- raw ----------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send ``data``; False (and ``send_failed``) if the listener would not take it."""
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
        except (OSError, TimeoutError):
            self.report.send_failed = True
            return False
        self.report.bytes_sent += len(data)
        return True

    def stream(self, total: int, fill: bytes = b"\0") -> int:
        """Send ``total`` bytes of ``fill`` in 64 KiB blocks; return how many were taken."""
        block = (fill * (65536 // max(1, len(fill)) + 1))[:65536]
        sent = 0
        while sent < total:
            part = block[: min(len(block), total - sent)]
            if not self.send(part):
                break
            sent += len(part)
        return sent

    def _fill(self, deadline: float) -> None:
        """Read what arrives until ``deadline`` or the first bytes, whichever is first."""
        if self.report.closed:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except ConnectionResetError:
            self.report.reset = self.report.closed = True
            return
        except OSError:
            self.report.closed = True
            return
        if not data:
            self.report.closed = True
        self._inbox += data

    def _pop_pdu(self) -> Pdu | None:
        if len(self._inbox) < 6:
            return None
        length = int.from_bytes(self._inbox[2:6], "big")
        if len(self._inbox) < 6 + length:
            return None
        found = Pdu(self._inbox[0], bytes(self._inbox[6 : 6 + length]))
        del self._inbox[: 6 + length]
        self.report.pdus.append(found)
        return found

    def next_pdu(self, timeout: float | None = None) -> Pdu | None:
        """The next PDU the listener sends, or None if it closed or ``timeout`` passed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            found = self._pop_pdu()
            if found is not None:
                return found
            if self.report.closed or time.monotonic() >= deadline:
                return None
            self._fill(deadline)

    def idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.report.closed:
            self._fill(deadline)
        while self._pop_pdu() is not None:
            pass

    def wait_closed(self, timeout: float) -> bool:
        """True once the listener has closed the connection, False if still open at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.report.closed and time.monotonic() < deadline:
            self._fill(deadline)
            while self._pop_pdu() is not None:
                pass
        return self.report.closed

    # -- DICOM --------------------------------------------------------------------

    def associate(
        self,
        called_ae: str = "RADBRIDGE",
        calling_ae: str = "HOSTILE",
        contexts: Sequence[tuple[str, Sequence[str]]] = (
            (pdus.VERIFICATION, (pdus.IMPLICIT_VR_LITTLE_ENDIAN,)),
        ),
        *,
        max_pdu: int = 16384,
    ) -> Pdu | None:
        """Request an association; the listener's A-ASSOCIATE-AC, -RJ or A-ABORT (or None)."""
        if not self.send(pdus.associate_rq(called_ae, calling_ae, contexts, max_pdu=max_pdu)):
            return None
        answer = self.next_pdu()
        if answer is not None and answer.type == PduType.A_ASSOCIATE_AC:
            self.max_pdu = answer.max_pdu() or 1 << 20
        return answer

    def _response(self, timeout: float) -> Response | None:
        fragments = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            answer = self.next_pdu(max(0.0, deadline - time.monotonic()))
            if answer is None or answer.type != PduType.P_DATA_TF:
                return None
            for _context, control, fragment in answer.pdvs():
                if control & 0x01:
                    fragments += fragment
                    if control & 0x02:
                        return pdus.read_command(bytes(fragments))

    def c_store(
        self,
        dataset: bytes,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        context_id: int = 1,
        timeout: float = 60.0,
    ) -> Response | None:
        """Send one C-STORE; its response, or None if the listener aborted or closed."""
        self._message_id += 1
        for part in pdus.c_store_rq(
            context_id,
            sop_class_uid,
            sop_instance_uid,
            dataset,
            message_id=self._message_id,
            max_pdu=self.max_pdu,
        ):
            if not self.send(part):
                self.report.responses.append(None)
                return None
        response = self._response(timeout)
        self.report.responses.append(response)
        return response

    def c_echo(self, context_id: int = 1, timeout: float = 10.0) -> Response | None:
        self._message_id += 1
        if not self.send(pdus.c_echo_rq(context_id, message_id=self._message_id)):
            return None
        response = self._response(timeout)
        self.report.responses.append(response)
        return response

    def release(self, timeout: float = 10.0) -> bool:
        """Release the association: True if the listener answered A-RELEASE-RP."""
        if not self.send(pdus.release_rq()):
            return False
        answer = self.next_pdu(timeout)
        return answer is not None and answer.type == PduType.A_RELEASE_RP

    # -- scripts ------------------------------------------------------------------

    def play(self, steps: Iterable[Step]) -> PeerReport:
        """Connect (if need be), play every step, and return the report; the connection stays
        open unless a step closed it."""
        for step in steps:
            match step:
                case Send(data):
                    self.send(data)
                case Stream(total, fill):
                    self.stream(total, fill)
                case Idle(seconds):
                    self.idle(seconds)
                case Associate(called, calling, contexts, max_pdu):
                    self.associate(called, calling, contexts, max_pdu=max_pdu)
                case Store(dataset, sop_class, sop_instance, context_id):
                    self.c_store(dataset, sop_class, sop_instance, context_id=context_id)
                case Echo(context_id):
                    self.c_echo(context_id)
                case Release():
                    self.release()
                case AwaitClose(timeout):
                    self.wait_closed(timeout)
                case Close():
                    self.close()
        return self.report
