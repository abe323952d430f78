"""radbridge's REST API (``/api/v1``), health checks and metrics, on the HTTP server.

:func:`install_api` adds them to the FastAPI application; ``/docs`` and ``/redoc``
show the OpenAPI description of the REST API (``/openapi.json``, see
:mod:`adapters.web.docs`; the FHIR and WADO-RS routes are left out: they follow
their own standards). Every ``/api/v1``
endpoint needs ``Authorization: Bearer <token>``: viewers read, operators also
retry and cancel jobs, retry write-back deliveries and resolve identity
conflicts, admins also manage tokens and reload the configuration.
Endpoints are plain functions run in the thread pool (the stores are synchronous).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine

from adapters.api import (
    alerts,
    audit,
    configuration,
    conflicts,
    contracts,
    critical,
    findings,
    health,
    jobs,
    orders,
    performance,
    results,
    routes,
    studies,
    timeline,
    tokens,
    trials,
    usage,
    vendors,
    verdicts,
)
from adapters.api.deps import ApiState
from adapters.api.responses import AUTH
from broker.runtime.edges import ServiceContext

PREFIX = "/api/v1"


#: Every ``/api/v1`` router, in the order they are included.
ROUTERS: tuple[APIRouter, ...] = tuple(
    module.router
    for module in (
        *(studies, orders, conflicts, jobs, results, verdicts, critical, vendors, routes),
        *(performance, alerts, configuration, timeline, usage, contracts, audit, tokens),
        *(findings, trials),  # several products on one study, silent trials
    )
)


def api_router() -> APIRouter:
    """Every ``/api/v1`` router."""
    api = APIRouter(prefix=PREFIX, responses=AUTH)
    for router in ROUTERS:
        api.include_router(router)
    return api


def api_routes() -> list[APIRoute]:
    """Every ``/api/v1`` endpoint (its ``path`` without the ``/api/v1`` prefix): what a
    test of every endpoint walks."""
    return [route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)]


def install_api(app: FastAPI, engine: Engine, context: ServiceContext | None = None) -> None:
    """Add ``/api/v1``, ``/healthz``, ``/readyz`` and ``/metrics`` (their description:
    :func:`openapi_schema`, served by :mod:`adapters.web.docs`)."""
    app.state.api = ApiState(engine, context)
    app.include_router(api_router())
    app.include_router(health.router)


def openapi_schema(*described: APIRouter) -> dict[str, Any]:
    """The OpenAPI description of the REST API and the health routes, and of the routers
    ``described`` besides them (the FHIR orders interface: ``/fhir``).

    Described on its own app: WADO-RS, vendors' results and the site link are not part of
    it (their peers follow their own standards and tokens).
    """
    own = FastAPI(title="radbridge REST API", version="1", description=__doc__ or "")
    own.include_router(api_router())
    own.include_router(health.router)
    for router in described:
        own.include_router(router)
    return own.openapi()
