"""The ``hl7`` edge: the MLLP orders listener on an asyncio loop in its own thread.

It runs when the configuration has an ``hl7:`` block, on ``hl7.listen``
(default 127.0.0.1:2575). The socket is bound in :meth:`Hl7Edge.start`, so a
port in use is a clear error at start, not a log line in a thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import ClassVar

from adapters.hl7.charsets import codec_for
from adapters.hl7.handler import MessageHandler
from adapters.hl7.server import AllowList, MllpServer
from adapters.sockets import listen
from adapters.tls import server_context
from broker.model.errors import AdapterError, Hl7Error
from broker.model.logging import get_logger
from broker.model.sites import SiteDirectory
from broker.runtime.edges import Edge, ServiceContext
from broker.runtime.reports import FinalReportIntake, matcher_of
from broker.store.orders import OrderStore

LOG = get_logger("radbridge.hl7")
START_TIMEOUT_SECONDS = 15.0
STOP_GRACE_SECONDS = 10.0


class Hl7Edge(Edge):
    """radbridge's HL7 v2 listener (the ``hl7`` edge)."""

    name: ClassVar[str] = "hl7"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: MllpServer | None = None
        self._socket: socket.socket | None = None
        self.port: int | None = None

    def recover(self, context: ServiceContext) -> None:
        """Nothing to recover: a message is acknowledged only once it is in the store."""

    def start(self, context: ServiceContext) -> None:
        hl7 = context.settings.hl7
        if hl7 is None:
            LOG.debug("hl7 listener not started: no hl7 block")
            return
        try:
            codec_for("", hl7.default_charset)
        except (LookupError, Hl7Error) as exc:
            raise AdapterError(f"hl7.default_charset: {exc}") from exc
        snapshots = context.snapshots

        def sites() -> SiteDirectory:
            """The sites of the configuration in force (a reload may change them)."""
            return (snapshots or context).settings.site_directory()

        handler = MessageHandler(
            OrderStore(context.engine),
            application=hl7.application,
            facility=hl7.facility,
            default_charset=hl7.default_charset,
            reports=FinalReportIntake(context.engine, matcher_of(snapshots or context)),
            sites=sites,
        )
        server = MllpServer(
            handler,
            allow=AllowList.from_entries(hl7.allow, allow_any=hl7.allow_any_peer),
            max_connections=hl7.max_connections,
            idle_timeout=hl7.idle_timeout_seconds,
            max_message_bytes=hl7.max_message_bytes,
            ssl_context=server_context(hl7.tls, setting="hl7.tls") if hl7.tls is not None else None,
        )
        self._socket = listen(
            hl7.listen.host,
            hl7.listen.port,
            service="HL7 (MLLP)",
            hint="set hl7.listen.port to a free port",
        )
        self.port = int(self._socket.getsockname()[1])
        loop = asyncio.new_event_loop()
        self._loop, self._server = loop, server
        self._thread = threading.Thread(target=loop.run_forever, name="hl7", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(server.start(self._socket), loop).result(
                START_TIMEOUT_SECONDS
            )
        except Exception as exc:
            self.stop()
            raise AdapterError(
                f"the HL7 listener on {hl7.listen.host}:{hl7.listen.port} did not start: {exc}"
            ) from exc
        LOG.info(
            "hl7 listener started",
            host=hl7.listen.host,
            port=self.port,
            tls=hl7.tls is not None,
            allow_any_peer=hl7.allow_any_peer,
        )

    def stop(self) -> None:
        """Stop accepting; messages being stored get a grace time to finish and be answered."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(server.close(STOP_GRACE_SECONDS), loop)
            try:
                future.result(STOP_GRACE_SECONDS + 5)
            except Exception:
                LOG.exception("the HL7 listener did not stop cleanly")
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if loop is not None and not loop.is_running():
            loop.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._loop = self._server = None
