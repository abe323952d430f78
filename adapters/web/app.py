"""The FastAPI application of radbridge's HTTP server."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from adapters.web.wado import wado_router


def create_app(engine: Engine) -> FastAPI:
    """The HTTP API on the store ``engine``: WADO-RS for vendors that pull (``/wado``)."""
    app = FastAPI(
        title="radbridge",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(wado_router(engine))
    return app
