"""``/healthz``, ``/readyz`` and ``/metrics`` (outside ``/api/v1``).

- ``/healthz``: 200 while the process serves HTTP (liveness), with the running version;
  no token.
- ``/readyz``: 200 when the store answers a query, the message bus accepts a
  connection and the spool's free space is above ``storage.min_free_space``, else 503
  naming what is down or low; no token.
- ``/metrics``: Prometheus text format. No token from loopback (a Prometheus
  or node agent on the same host); from anywhere else a viewer token, since
  queue depths and vendor names are operational data.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from adapters.api.auth import REALM, api_tokens, bearer_token, from_loopback
from adapters.api.deps import State
from adapters.api.responses import AUTH
from broker.engine.bus import Bus
from broker.engine.metrics import BusCollector, StoreCollector, exposition
from broker.model.domain import Role
from broker.model.version import VERSION
from broker.store.space import SpaceWatch

router = APIRouter(include_in_schema=True, tags=["health"])

#: Bus checks open a connection: at most this often.
BUS_CHECK_SECONDS = 5.0


class _BusCheck:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[float, str, str | None] = (0.0, "", None)

    def problem(self, url: str, prefix: str) -> str | None:
        with self._lock:
            at, checked, problem = self._last
            if checked == url and time.monotonic() - at < BUS_CHECK_SECONDS:
                return problem
            bus = Bus(url, prefix=prefix)
            if bus.memory:
                problem = None
            else:
                try:
                    with bus.connection() as conn:
                        conn.ensure_connection(max_retries=1, timeout=2)
                    problem = None
                except Exception as exc:  # kombu raises many kinds
                    problem = f"{type(exc).__name__}: {exc}"
            self._last = (time.monotonic(), url, problem)
            return problem


BUS_CHECK = _BusCheck()


def space_watch(request: Request, api: State) -> SpaceWatch:
    """The free space of the spool, measured by this process (one watch per app)."""
    watch = getattr(request.app.state, "space_watch", None)
    if not isinstance(watch, SpaceWatch):
        storage = api.settings.storage  # a restart applies a change of it
        watch = SpaceWatch(storage.spool, storage.min_free_bytes)
        request.app.state.space_watch = watch
    return watch


@router.get("/healthz", summary="Liveness: the process serves HTTP; the running version")
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": VERSION}


@router.get(
    "/readyz",
    summary="Readiness: the store and the message bus answer",
    responses={503: {"description": "Something radbridge needs is down."}},
)
def readyz(request: Request, api: State) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        with api.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except SQLAlchemyError as exc:
        checks["store"] = f"down: {type(exc).__name__}"
    bus = api.settings.bus
    problem = BUS_CHECK.problem(bus.connection_url(), bus.prefix)
    checks["bus"] = "ok" if problem is None else f"down: {problem}"
    space = space_watch(request, api).current()
    checks["disk"] = "ok" if not space.low else f"low: {space.describe()}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (loopback, or a viewer token)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **AUTH},
)
def metrics(
    request: Request, api: State, authorization: Annotated[str | None, Header()] = None
) -> Response:
    if not from_loopback(request):
        token = api_tokens(request).identify(bearer_token(authorization) or "")
        if token is None:
            raise HTTPException(
                401,
                "/metrics needs a viewer token from other hosts than loopback",
                headers={"WWW-Authenticate": REALM},
            )
        if not token.role.allows(Role.VIEWER):
            raise HTTPException(403, "a viewer token or higher is needed")
    collector = getattr(request.app.state, "metrics_collector", None)
    vendors = tuple(sorted(api.settings.vendors))  # the vendors in force (after a reload too)
    if not isinstance(collector, StoreCollector) or collector.vendors != vendors:
        collector = StoreCollector(api.engine, vendors, space_watch(request, api))
        request.app.state.metrics_collector = collector
    bus = api.settings.bus
    up = BusCollector(lambda: BUS_CHECK.problem(bus.connection_url(), bus.prefix) is None)
    return Response(exposition(collector, up), media_type=CONTENT_TYPE_LATEST)
