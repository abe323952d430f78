"""``/openapi.json``, ``/docs`` (Swagger UI) and ``/redoc``: the REST API's description.

Everything the pages load comes from radbridge itself (hospitals run offline):
Swagger UI's and ReDoc's files are those the maintained ``fastapi-offline``
package ships, served under ``/docs/assets``. Swagger UI's "Authorize" button
takes an API token (the ``token`` bearer security scheme of the description).

Who may read them: anyone when ``http.public_docs`` is on; otherwise clients on
this host (loopback, see :func:`adapters.api.auth.from_loopback`), and for
``/openapi.json`` also any valid API token. Others get 403 (401 for
``/openapi.json`` without a token) saying what would open them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from adapters.api import openapi_schema
from adapters.api.auth import REALM, Credentials, api_tokens, from_loopback
from adapters.api.deps import state

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs/assets"
TITLE = "radbridge REST API"
#: The pages load only radbridge's own files and talk only to radbridge (ReDoc's footer
#: logo from its CDN is refused by the browser, so nothing leaves the hospital).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'"
)
CLOSED = (
    "the API description is served to clients on this host only; "
    "set http.public_docs: true to serve it to every client"
)


def _open_to(request: Request) -> bool:
    return state(request).settings.http_settings().public_docs or from_loopback(request)


def _pages_allowed(request: Request) -> None:
    if not _open_to(request):
        raise HTTPException(403, CLOSED)


def install_docs(app: FastAPI, *described: APIRouter) -> None:
    """Add the description, its two pages and their assets to ``app`` (after ``install_api``);
    the description covers the REST API and the routers ``described`` (``/fhir``)."""
    cached: dict[str, Any] = {}
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request, credentials: Credentials) -> JSONResponse:
        if not _open_to(request):
            token = credentials.credentials if credentials is not None else ""
            if api_tokens(request).identify(token.strip()) is None:
                raise HTTPException(
                    401, f"{CLOSED}, or send an API token", headers={"WWW-Authenticate": REALM}
                )
        if "schema" not in cached:
            cached["schema"] = openapi_schema(*described)
        return JSONResponse(cached["schema"])

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        _pages_allowed(request)
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=TITLE,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )
        page.headers["Content-Security-Policy"] = PAGE_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        _pages_allowed(request)
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=TITLE,
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = PAGE_POLICY
        return page
