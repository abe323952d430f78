"""radbridge's REST API (``/api/v1``), health checks and metrics, on the HTTP server.

:func:`install_api` adds them to the FastAPI application; ``/docs`` shows the
OpenAPI description of the REST API (``/openapi.json``; the FHIR and WADO-RS
routes are left out: they follow their own standards). Every ``/api/v1``
endpoint needs ``Authorization: Bearer <token>``: viewers read, operators also
retry and cancel jobs, retry write-back deliveries and resolve identity
conflicts, admins also manage tokens and reload the configuration.
Endpoints are plain functions run in the thread pool (the stores are synchronous).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import Engine

from adapters.api import (
    audit,
    configuration,
    conflicts,
    health,
    jobs,
    orders,
    results,
    routes,
    studies,
    tokens,
    usage,
    vendors,
)
from adapters.api.deps import ApiState
from broker.runtime.edges import ServiceContext

PREFIX = "/api/v1"


def api_router() -> APIRouter:
    """Every ``/api/v1`` router."""
    api = APIRouter(prefix=PREFIX)
    routers = (studies, orders, conflicts, jobs, results, vendors, routes, configuration)
    for module in (*routers, usage, audit, tokens):
        api.include_router(module.router)
    return api


def install_api(app: FastAPI, engine: Engine, context: ServiceContext | None = None) -> None:
    """Add ``/api/v1``, ``/healthz``, ``/readyz``, ``/metrics``, ``/docs`` and ``/openapi.json``."""
    app.state.api = ApiState(engine, context)
    app.include_router(api_router())
    app.include_router(health.router)
    cached: dict[str, Any] = {}

    def schema() -> dict[str, Any]:
        if "schema" not in cached:
            # Described on its own: the FHIR and WADO-RS routes follow their standards.
            own = FastAPI(title="radbridge REST API", version="1", description=__doc__ or "")
            own.include_router(api_router())
            own.include_router(health.router)
            cached["schema"] = own.openapi()
        found: dict[str, Any] = cached["schema"]
        return found

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(schema())

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="radbridge REST API")
