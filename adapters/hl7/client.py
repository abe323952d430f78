"""The MLLP sender: one message out, its ACK back, retries when no ACK comes.

:meth:`MllpClient.send` frames the message, waits for the acknowledgment
whose MSA-2 echoes the message's MSH-10 and returns it parsed. No answer
(timeout), a connection that cannot be made or breaks, or an answer that is
not an ACK are retried on a new connection with exponential backoff; after
the last attempt :class:`~broker.model.errors.Hl7Error` is raised. An AE/AR
(CE/CR) answer is not retried here: :class:`~broker.model.errors.Hl7RejectedError`
goes to the caller, which decides when to try again (the write-back jobs'
retry policy). The connection is kept open between messages.

The client is synchronous (write-back runs on worker threads) and not
thread-safe: one client per sending thread.
"""

from __future__ import annotations

import socket
import ssl
import time

from adapters.hl7.ack import Ack, read_ack
from adapters.hl7.charsets import codec_for
from adapters.hl7.framing import FrameReader, Oversized, frame
from adapters.hl7.parse import Hl7ParseError, read_header
from broker.model.errors import Hl7Error, Hl7RejectedError
from broker.model.logging import get_logger

LOG = get_logger("radbridge.hl7.client")
MAX_ACK_BYTES = 1024 * 1024


class MllpClient:
    """Sends HL7 messages to one MLLP receiver (a RIS)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.5,
        backoff_cap: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        default_charset: str = "utf-8",
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.default_charset = default_charset
        self._socket: socket.socket | None = None
        self._framer = FrameReader(MAX_ACK_BYTES)

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None

    def send(self, message: bytes | str) -> Ack:
        """Send one message; its positive ACK (AA or CA), or an error.

        A ``str`` is encoded with the character set its MSH-18 names.
        """
        try:
            header = read_header(
                message.encode("utf-8") if isinstance(message, str) else message,
                self.default_charset,
            )
        except Hl7ParseError as exc:
            raise Hl7Error(f"not an HL7 message: {exc}") from exc
        if isinstance(message, str):
            codec = header.codec or codec_for("", self.default_charset)
            payload = message.encode(codec)
        else:
            payload = message
        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                ack = self._exchange(payload, header.control_id)
            except (OSError, Hl7ParseError, TimeoutError) as exc:
                self.close()
                last = exc
                LOG.warning(
                    "no ACK from the HL7 receiver",
                    host=self.host,
                    port=self.port,
                    attempt=attempt,
                    attempts=self.attempts,
                    error=f"{type(exc).__name__}: {exc}",
                )
                if attempt < self.attempts:
                    time.sleep(min(self.backoff_cap, self.backoff * 2 ** (attempt - 1)))
                continue
            if not ack.code.positive:
                raise Hl7RejectedError(ack.code.value, ack.text)
            return ack
        raise Hl7Error(
            f"no ACK from {self.host}:{self.port} after {self.attempts} attempts: "
            f"{type(last).__name__}: {last}"
        ) from last

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
        self._framer = FrameReader(MAX_ACK_BYTES)
        return sock

    def _exchange(self, payload: bytes, control_id: str) -> Ack:
        if self._socket is None:
            self._socket = self._connect()
        sock = self._socket
        sock.sendall(frame(payload))
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ACK within {self.timeout:g} s")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the receiver closed the connection without an ACK")
            for block in self._framer.feed(data):
                if isinstance(block, Oversized):
                    raise Hl7ParseError(f"an answer of {block.size} bytes is not an ACK")
                ack = read_ack(block, self.default_charset)
                if ack.control_id == control_id:
                    return ack
                LOG.warning(
                    "ACK for another message ignored",
                    expected=control_id,
                    got=ack.control_id,
                )
