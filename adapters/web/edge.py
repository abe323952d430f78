"""The ``web`` edge: uvicorn serving :func:`adapters.web.app.create_app` in a thread.

It runs when the configuration has an ``http:`` block or a vendor uses the
``http`` transport (whose vendors pull studies from it), on ``http.listen``
(default 127.0.0.1:8080). The socket is bound before the server starts, so a
port in use is a clear error at start, not a log line in a thread.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from
``http.trusted_proxies`` (uvicorn's proxy headers middleware; by default from no
one), so the client address the login throttle, ``/metrics`` and the docs check
see is the peer's own unless a configured proxy speaks for it. ``http.tls``
serves HTTPS (:func:`adapters.tls.server_context`). The edge gives the service's timer
the purge of a hub's abandoned transfers (:class:`adapters.link.ingest.AbandonedTransfers`).

An idle server does nothing: uvicorn's own loop looks ten times a second whether it
should stop and refreshes its ``Date`` header every second; :class:`QuietServer` sleeps
until it is told to stop, and each response gets its ``Date`` as it starts (:func:`dated`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from email.utils import formatdate
from typing import ClassVar

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.link.ingest import AbandonedTransfers, Staging
from adapters.sockets import listen
from adapters.tls import server_context
from adapters.web.app import create_app
from broker.model.errors import AdapterError
from broker.model.logging import get_logger
from broker.runtime.edges import Edge, ServiceContext
from broker.store.transfers import TransferStore
from config.schema import Settings

LOG = get_logger("radbridge.web")
START_TIMEOUT_SECONDS = 15.0
STOP_GRACE_SECONDS = 10.0


def dated(app: ASGIApp) -> ASGIApp:
    """``app``, each HTTP response with a ``Date`` header of the instant it starts."""

    async def with_date(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                date = (b"date", formatdate(usegmt=True).encode())
                message = {**message, "headers": [date, *message.get("headers", [])]}
            await send(message)

        await app(scope, receive, send_dated)

    return with_date


class QuietServer(uvicorn.Server):
    """uvicorn's server, asleep between requests until :meth:`exit` (no tick)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        await self.on_tick(0)  # the default headers (the configured ones)
        self._exit = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if not self.should_exit:  # exit() may have come before the loop was known
            await self._exit.wait()

    def exit(self) -> None:
        """Stop serving (from any thread): requests in progress get the grace time."""
        self.should_exit = True
        loop, event = self._loop, self._exit
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)


class WebEdge(Edge):
    """radbridge's HTTP server (the ``web`` edge)."""

    name: ClassVar[str] = "web"

    def __init__(self) -> None:
        self._server: QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def recover(self, context: ServiceContext) -> None:
        """Nothing to recover: tokens and jobs are in the store."""

    def start(self, context: ServiceContext) -> None:
        settings = context.settings
        if not settings.http_server_wanted():
            LOG.debug("http server not started: no http block and no http vendor")
            return
        http = settings.http_settings()
        tls = server_context(http.tls, setting="http.tls") if http.tls is not None else None
        self._socket = listen(
            http.listen.host,
            http.listen.port,
            service="HTTP",
            hint="set http.listen to a free port",
        )
        if context.timed is not None:  # a hub's abandoned transfers, without waiting for the next
            context.timed(
                AbandonedTransfers(
                    TransferStore(context.engine),
                    Staging(context.spool),
                    lambda: _settings(context).http_settings().transfers.abandon_after,
                )
            )
        config = uvicorn.Config(
            dated(create_app(context.engine, context)),
            loop="asyncio",
            lifespan="off",
            log_config=None,
            access_log=False,
            date_header=False,  # dated() gives each response its own
            timeout_graceful_shutdown=int(STOP_GRACE_SECONDS),
            proxy_headers=bool(http.trusted_proxies),
            forwarded_allow_ips=[str(network) for network in http.trusted_proxies],
            ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
        )
        server = QuietServer(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="web", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AdapterError(
                    f"the HTTP server on {http.listen.host}:{http.listen.port} did not start"
                )
            time.sleep(0.02)
        LOG.info(
            "http server started",
            host=http.listen.host,
            port=http.listen.port,
            public_url=http.base_url(),
            tls=tls is not None,
            trusted_proxies=[str(network) for network in http.trusted_proxies],
        )

    def stop(self) -> None:
        """Stop accepting; requests in progress get a grace time to finish."""
        if self._server is not None:
            self._server.exit()
        if self._thread is not None:
            self._thread.join(STOP_GRACE_SECONDS + 5)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None


def _settings(context: ServiceContext) -> Settings:
    """The configuration in force (a reload's), or the one the service started with."""
    return context.snapshots.settings if context.snapshots is not None else context.settings
