"""Logging in to the console: users with passwords, or an API token; sessions and CSRF.

- ``POST /login`` checks a console user's password
  (:class:`~broker.store.users.ConsoleUsers`, argon2id) or an API token
  (:class:`~broker.store.api_tokens.ApiTokens`), opens a session
  (:class:`~broker.store.users.ConsoleSessions`) and sets its cookie: random,
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/console``, ``Secure`` over HTTPS.
- Every page needs a live session (:data:`SignedIn`); without one a page
  redirects to the login form and an htmx request gets 401 with ``HX-Redirect``.
- Every POST needs the session's CSRF token, in the form field ``csrf`` or the
  ``X-CSRF-Token`` header (htmx sends the header), and the role the action
  needs (:func:`acting`): otherwise 403.
- Logins, failed logins and logouts are in the audit trail.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import RedirectResponse, Response

from adapters.api.auth import SITE_SCOPED
from adapters.console.state import ConsoleState, console_state
from adapters.console.views import render, translator
from broker.i18n import LANGUAGES, N_
from broker.model.domain import Role
from broker.store.users import MAX_PASSWORD, Session

COOKIE = "radbridge_console"
#: Failed logins from one address within :data:`THROTTLE_WINDOW` seconds before it must wait.
THROTTLE_FAILURES = 10
THROTTLE_WINDOW = 300.0

router = APIRouter()
State = Annotated[ConsoleState, Depends(console_state)]


class LoginRequired(Exception):  # noqa: N818 (a control-flow signal, handled into a redirect)
    """No live session: the handler redirects to the login form."""


class SiteHidden(Exception):  # noqa: N818 (a control-flow signal, handled into a 404)
    """A page a site-scoped user may not see: answered 404, as for one that does not exist."""


class Forbidden(Exception):  # noqa: N818
    """The session may not do this (role too low, or a missing or wrong CSRF token): 403."""

    def __init__(self, message: str, **values: str) -> None:
        super().__init__(message.format(**values))
        self.message = message
        """English, marked for the catalogue; ``{name}`` placeholders filled from ``values``."""
        self.values = values

    def text(self, _: Callable[[str], str]) -> str:
        """The message in the language of ``_``."""
        return _(self.message).format(**self.values)


class _Throttle:
    """Failed logins per client address, in memory (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, peer: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(peer)
            if recent is None:
                return False
            while recent and now - recent[0] > THROTTLE_WINDOW:
                recent.popleft()
            return len(recent) >= THROTTLE_FAILURES

    def failed(self, peer: str) -> None:
        with self._lock:
            self._failures.setdefault(peer, deque(maxlen=THROTTLE_FAILURES)).append(
                time.monotonic()
            )

    def succeeded(self, peer: str) -> None:
        with self._lock:
            self._failures.pop(peer, None)


THROTTLE = _Throttle()


def peer_of(request: Request) -> str:
    return request.client.host if request.client else ""


def root(request: Request) -> str:
    """Where the console is mounted (``/console``)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def safe_next(request: Request, target: str | None) -> str:
    """``target`` if it is a page of the console, else the dashboard (no open redirects)."""
    base = root(request)
    if (
        target
        and target.startswith(base + "/")
        and not target.startswith("//")
        and "\\" not in target
        and "://" not in target
    ):
        return target
    return base + "/"


def signed_in(request: Request, console: State) -> Session:
    """The request's live session, or :class:`LoginRequired`."""
    found = console.sessions.get(request.cookies.get(COOKIE, ""))
    if found is None:
        raise LoginRequired
    if found.sites is not None:  # only pages that keep to the user's sites
        endpoint = getattr(request.scope.get("route"), "endpoint", None)
        if not getattr(endpoint, SITE_SCOPED, False):
            raise SiteHidden
    request.state.session = found
    return found


SignedIn = Annotated[Session, Depends(signed_in)]


def reading(role: Role) -> Callable[..., Session]:
    """A dependency for a page only ``role`` and higher may see."""
    needed = Role(role)

    def check(who: SignedIn) -> Session:
        if not who.role.allows(needed):
            raise Forbidden(
                N_("this page is for the role {needed} or higher; you are signed in as {role}"),
                needed=needed.value,
                role=who.role.value,
            )
        return who

    return check


def acting(role: Role) -> Callable[..., Session]:
    """A dependency for a POST: the session, its CSRF token, and ``role`` or higher."""
    needed = Role(role)

    def check(
        who: SignedIn,
        csrf: Annotated[str | None, Form()] = None,
        x_csrf_token: Annotated[str | None, Header()] = None,
    ) -> Session:
        given = csrf or x_csrf_token or ""
        if not hmac.compare_digest(given.encode(), who.csrf.encode()):
            raise Forbidden(N_("the form is stale or was not sent by the console (CSRF token)"))
        if not who.role.allows(needed):
            raise Forbidden(
                N_("this needs the role {needed} or higher; you are signed in as {role}"),
                needed=needed.value,
                role=who.role.value,
            )
        return who

    return check


Operator = Annotated[Session, Depends(acting(Role.OPERATOR))]
#: Radiologists (and operators, admins): verdicts on AI findings.
Reader = Annotated[Session, Depends(acting(Role.READER))]
AnyoneActing = Annotated[Session, Depends(acting(Role.VIEWER))]


def _login_page(
    request: Request, *, error: str | None = None, next_page: str = "", status: int = 200
) -> Response:
    return render(
        request,
        "login.html",
        {"error": error, "next": next_page},
        status=status,
    )


@router.get("/login", name="login")
def login_form(
    request: Request, next_page: Annotated[str, Query(alias="next", max_length=2000)] = ""
) -> Response:
    return _login_page(request, next_page=safe_next(request, next_page))


@router.post("/login")
def login(
    *,
    request: Request,
    console: State,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=MAX_PASSWORD)] = "",
    token: Annotated[str, Form(max_length=256)] = "",
    next_page: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> Response:
    """A user's password or an API token opens a session; anything else is 401."""
    peer = peer_of(request)
    next_page = safe_next(request, next_page)
    _ = translator(request)
    if THROTTLE.blocked(peer):
        return _login_page(
            request,
            error=_("Too many failed logins from this address; wait a few minutes."),
            next_page=next_page,
            status=429,
        )
    user_id = token_id = None
    subject = f"user:{username}" if username else "token"
    if token:
        found = console.tokens.identify(token.strip())
        if found is not None:
            token_id = found.id
    elif username and password:
        user = console.users.verify(username, password)
        if user is not None:
            user_id = user.id
    if user_id is None and token_id is None:
        THROTTLE.failed(peer)
        console.audit.record(f"console:{subject}", "console.login_failed", subject, {}, peer)
        return _login_page(
            request,
            error=_("Wrong username or password, or an unknown or revoked token."),
            next_page=next_page,
            status=401,
        )
    THROTTLE.succeeded(peer)
    cookie, session = console.sessions.open(user_id=user_id, token_id=token_id, peer=peer)
    console.audit.record(
        session.actor, "console.login", subject, {"role": session.role.value}, peer
    )
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        path=root(request) or "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", name="logout")
def logout(request: Request, console: State, who: AnyoneActing) -> Response:
    console.sessions.close(who.id)
    console.audit.record(who.actor, "console.logout", f"session:{who.id[:8]}", {}, peer_of(request))
    response = RedirectResponse(f"{root(request)}/login", status_code=303)
    response.delete_cookie(COOKIE, path=root(request) or "/")
    return response


@router.post("/language", name="language")
def choose_language(
    *,
    request: Request,
    console: State,
    who: AnyoneActing,
    language: Annotated[str, Form(max_length=16)] = "",
    next_page: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> Response:
    """A console user's language (stored with the user; an API token's session has none)."""
    if language not in LANGUAGES:
        raise Forbidden(
            N_("no language {language}; valid: {valid}"),
            language=language,
            valid=", ".join(LANGUAGES),
        )
    if who.user_id is None:
        raise Forbidden(N_("an API token has no language of its own; the site's is used"))
    console.users.set_language(who.subject, language)
    console.audit.record(
        who.actor,
        "console.language",
        f"user:{who.subject}",
        {"language": language},
        peer_of(request),
    )
    return RedirectResponse(safe_next(request, next_page), status_code=303)


def login_redirect(request: Request) -> Response:
    """Where :class:`LoginRequired` leads: the login form (or 401 + HX-Redirect for htmx)."""
    here = request.url.path
    if request.url.query:
        here += "?" + request.url.query
    target = f"{root(request)}/login?next={quote(safe_next(request, here), safe='')}"
    if request.headers.get("HX-Request") or request.method != "GET":
        return Response("sign in first", status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
