"""The operations console: server-rendered pages under ``/console`` on radbridge's HTTP server.

No front-end build and nothing from the internet: Jinja2 templates
(``templates/``), one CSS file and htmx vendored in ``static/`` (hospitals run
offline). Pages read the stores directly in plain ``def`` endpoints (run in
the thread pool): the dashboard, the studies of a day, one study, jobs, the
routes with "explain this study", usage per vendor with CSV, and the audit
trail for admins. Log in with a console user (``radbridge users add``) or an
API token; see :mod:`adapters.console.auth`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from adapters.console import (
    audit,
    auth,
    critical,
    jobs,
    pages,
    performance,
    routes,
    trials,
    usage,
    vendors,
    verdicts,
)
from adapters.console.auth import Forbidden, LoginRequired, SiteHidden, login_redirect
from adapters.console.state import ConsoleState
from adapters.console.views import render, translator
from broker.runtime.edges import ServiceContext

STATIC = Path(__file__).parent / "static"

#: Only the console's own files; no inline script or style; never in a frame.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_console(engine: Engine, context: ServiceContext | None = None) -> FastAPI:
    """The console application; :func:`adapters.web.app.create_app` mounts it at ``/console``."""
    app = FastAPI(title="radbridge console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = ConsoleState(engine, context)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    pages_ = (auth, pages, jobs, critical, routes, usage, trials, audit, vendors, verdicts)
    for module in (*pages_, performance):
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    def _login(request: Request, _exc: LoginRequired) -> Response:
        return login_redirect(request)

    @app.exception_handler(SiteHidden)
    def _hidden(request: Request, _exc: SiteHidden) -> Response:
        _ = translator(request)
        return render(request, "error.html", {"title": _("Not found"), "message": ""}, status=404)

    @app.exception_handler(Forbidden)
    def _forbidden(request: Request, exc: Forbidden) -> Response:
        return render(
            request,
            "error.html",
            {"title": translator(request)("Not allowed"), "message": exc.text(translator(request))},
            status=403,
        )

    @app.middleware("http")
    async def _headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith(f"{request.scope.get('root_path', '')}/static/"):
            # Pages carry patient data: no copies in caches.
            response.headers["Cache-Control"] = "no-store"
        return response

    return app
