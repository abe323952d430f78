"""The FastAPI application of radbridge's HTTP server."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from adapters.api import install_api
from adapters.console import create_console
from adapters.fhir.server import fhir_router
from adapters.results.http import results_router
from adapters.web.wado import wado_router
from broker.runtime.edges import ServiceContext
from broker.store.api_tokens import ApiTokens


def create_app(engine: Engine, context: ServiceContext | None = None) -> FastAPI:
    """The HTTP API on the store ``engine``.

    - ``/wado``: WADO-RS for vendors that pull, with per-job tokens;
    - ``/fhir``: the FHIR R4 orders interface, with API tokens and roles
      (:func:`adapters.api.auth.require`, which finds them on ``app.state.api_tokens``);
    - ``/results``: STOW-RS and JSON findings from vendors, with their results
      tokens (needs the service ``context``: settings and spool);
    - ``/api/v1`` (REST API, OpenAPI at ``/docs``), ``/healthz``, ``/readyz``,
      ``/metrics``: :func:`adapters.api.install_api`;
    - ``/console``: the operations console (:func:`adapters.console.create_console`).
    """
    app = FastAPI(
        title="radbridge",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.api_tokens = ApiTokens(engine)
    app.include_router(wado_router(engine))
    app.include_router(fhir_router(engine))
    if context is not None:
        app.include_router(results_router(context))
    install_api(app, engine, context)
    app.mount("/console", create_console(engine, context))
    return app
