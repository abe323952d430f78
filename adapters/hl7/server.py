"""The asyncio MLLP listener: connections, allow-list, limits, TLS, one store thread.

Each connection reads frames with a :class:`~adapters.hl7.framing.FrameReader`
and answers them in order. The work of a message (parse, map, store, build
the ACK) runs on one dedicated store thread shared by all connections, so the
event loop keeps accepting and reading while the store writes, and messages
are stored in the order they arrived. A connection is refused (closed at once,
before any TLS handshake) when its address is not allowed or too many are
open; it is closed after ``idle_timeout`` seconds without a byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from adapters.hl7.framing import FrameReader, Oversized
from adapters.hl7.handler import Handled, MessageHandler
from broker.model.errors import AdapterError
from broker.model.logging import get_logger

LOG = get_logger("radbridge.hl7")
READ_BYTES = 256 * 1024
TLS_HANDSHAKE_SECONDS = 10.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowList:
    """Source addresses allowed in; ``None`` networks means anyone."""

    networks: tuple[IPNetwork, ...] | None

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, allow_any: bool) -> AllowList:
        """Networks from addresses, CIDRs and host names (resolved once, now).

        No entries and not ``allow_any``: loopback only.
        """
        entries = list(entries)
        if allow_any:
            return cls(None)
        if not entries:
            entries = ["127.0.0.0/8", "::1"]
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                try:
                    infos = socket.getaddrinfo(entry, None, proto=socket.IPPROTO_TCP)
                except OSError as exc:
                    raise AdapterError(
                        f"hl7.allow: cannot resolve host {entry!r}: {exc}; valid: a host name "
                        "this machine resolves, an address or a network (10.1.0.0/16)"
                    ) from exc
                networks += [ipaddress.ip_network(info[4][0]) for info in infos]
        return cls(tuple(networks))

    def allows(self, address: str) -> bool:
        if self.networks is None:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


class MllpServer:
    """Serves MLLP on a listening socket with a :class:`MessageHandler`."""

    def __init__(
        self,
        handler: MessageHandler,
        *,
        allow: AllowList,
        max_connections: int,
        idle_timeout: float,
        max_message_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        on_handled: Callable[[Handled], None] | None = None,
    ) -> None:
        self.handler = handler
        self.allow = allow
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self.ssl_context = ssl_context
        self.on_handled = on_handled
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-store")
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}
        """Open connections, and whether each is handling a message right now."""
        self._closing = False

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (already bound and listening)."""
        self._server = await asyncio.start_server(self._connection, sock=sock, limit=READ_BYTES)

    async def close(self, grace: float) -> None:
        """Stop accepting; let messages being handled finish (up to ``grace`` s), then close."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            _done, pending = await asyncio.wait(list(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self.executor.shutdown(wait=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address, port = _peer(writer)
        peer = f"{address}:{port}"
        if not self.allow.allows(address):
            LOG.warning("hl7 connection refused: address not allowed", peer=peer)
            await _close(writer)
            return
        if self._closing or len(self._connections) >= self.max_connections:
            LOG.warning(
                "hl7 connection refused: too many connections",
                peer=peer,
                max_connections=self.max_connections,
            )
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        log = LOG.bind(peer=peer)
        log.info("hl7 connection opened", connections=len(self._connections))
        framer = FrameReader(self.max_message_bytes)
        messages = 0
        try:
            if self.ssl_context is not None:
                await writer.start_tls(
                    self.ssl_context, ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS
                )
            loop = asyncio.get_running_loop()
            while not self._closing:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    log.info("hl7 connection idle, closed", idle_timeout=self.idle_timeout)
                    break
                if not data:
                    break
                frames = framer.feed(data)
                if not frames:
                    continue
                self._connections[task] = True
                for frame in frames:
                    if isinstance(frame, Oversized):
                        handled = await loop.run_in_executor(
                            self.executor,
                            self.handler.handle_oversized,
                            frame.head,
                            frame.size,
                            self.max_message_bytes,
                            peer,
                        )
                    else:
                        handled = await loop.run_in_executor(
                            self.executor, self.handler.handle, frame, peer
                        )
                    messages += 1
                    if handled.reply is not None:
                        writer.write(b"\x0b" + handled.reply + b"\x1c\x0d")
                    if self.on_handled is not None:
                        self.on_handled(handled)
                await writer.drain()
                self._connections[task] = False
        except asyncio.CancelledError:
            pass
        except (OSError, ssl.SSLError, EOFError) as exc:
            log.info("hl7 connection ended by an error", error=f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("hl7 connection failed")
        finally:
            self._connections.pop(task, None)
            if framer.pending or framer.junk_bytes or framer.abandoned:
                log.warning(
                    "hl7 connection had bytes outside complete frames",
                    unfinished_frame_bytes=framer.pending,
                    junk_bytes=framer.junk_bytes,
                    abandoned_frames=framer.abandoned,
                )
            log.info("hl7 connection closed", messages=messages)
            await _close(writer)


def _peer(writer: asyncio.StreamWriter) -> tuple[str, int]:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return "?", 0


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2.0)
