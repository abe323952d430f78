"""The FastAPI application of radbridge's HTTP server."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.api import install_api
from adapters.console import create_console
from adapters.fhir.server import fhir_router
from adapters.link.hub import transfers_router
from adapters.results.http import results_router
from adapters.web.docs import install_docs
from adapters.web.wado import PrivacyOf, wado_router
from broker.model.deid import Deidentify
from broker.model.jobs import Job
from broker.runtime.edges import ServiceContext
from broker.store.api_tokens import ApiTokens


def create_app(engine: Engine, context: ServiceContext | None = None) -> FastAPI:
    """The HTTP API on the store ``engine``.

    - ``/wado``: WADO-RS for vendors that pull, with per-job tokens;
    - ``/fhir``: the FHIR R4 orders interface, with API tokens and roles
      (:func:`adapters.api.auth.require`, which finds them on ``app.state.api_tokens``);
    - ``/results``: STOW-RS and JSON findings from vendors, with their results
      tokens (needs the service ``context``: settings and spool);
    - ``/link/v1/transfers``: studies from site radbridges over the site-to-hub link,
      with site-scoped API tokens (needs the service ``context``; :mod:`adapters.link.hub`);
    - ``/api/v1`` (REST API), ``/healthz``, ``/readyz``, ``/metrics``:
      :func:`adapters.api.install_api`;
    - ``/openapi.json``, ``/docs``, ``/redoc``: :func:`adapters.web.docs.install_docs` (the
      REST API's and ``/fhir``'s description);
    - ``/console``: the operations console (:func:`adapters.console.create_console`).

    Every answer over HTTPS carries ``Strict-Transport-Security`` (:class:`Hsts`).
    """
    app = FastAPI(
        title="radbridge",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.api_tokens = ApiTokens(engine)
    app.include_router(wado_router(engine, *_privacy(context)))
    fhir = fhir_router(engine)
    app.include_router(fhir)
    if context is not None:
        app.include_router(results_router(context))
        app.include_router(transfers_router(context))
    install_api(app, engine, context)
    install_docs(app, fhir)
    app.mount("/console", create_console(engine, context))
    app.add_middleware(Hsts)
    return app


def _privacy(context: ServiceContext | None) -> tuple[PrivacyOf | None, Path | None]:
    """Which jobs WADO-RS serves de-identified (the snapshot in force), and where the
    copies are made (the spool's tmp folder)."""
    if context is None or context.snapshots is None:
        return None, None
    snapshots = context.snapshots

    def privacy(job: Job) -> tuple[Deidentify, str] | None:
        current = snapshots.current
        profile = current.deidentify(job.vendor, job.route)
        secret = current.pseudonym_secret
        return (profile, secret) if profile is not None and secret else None

    return privacy, context.spool.tmp


class Hsts:
    """ASGI middleware: ``Strict-Transport-Security`` on every answer over HTTPS (with
    ``http.tls``, or from a trusted proxy that says ``X-Forwarded-Proto: https``)."""

    VALUE = "max-age=31536000"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("Strict-Transport-Security", self.VALUE)
            await send(message)

        await self.app(scope, receive, send_with_hsts)
