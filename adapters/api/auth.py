"""API tokens: bearer tokens with roles for radbridge's REST API and its FHIR interface.

``require(Role.OPERATOR)`` is a FastAPI dependency: it reads
``Authorization: Bearer <token>``, checks the token with
:class:`~broker.store.api_tokens.ApiTokens` (found on ``app.state.api_tokens``,
set by :func:`adapters.web.app.create_app`) and answers

- no header, another scheme, an unknown or revoked token → 401 with
  ``WWW-Authenticate: Bearer``;
- a valid token whose role is below the one needed → 403;
- a token limited to sites, on an endpoint not marked :func:`site_scoped` → 404 (as
  for a record that does not exist).

It raises ``HTTPException``; a router that wants another body (FHIR answers an
OperationOutcome) converts it in its route class. WADO-RS does not use this:
its tokens are per job (:mod:`broker.store.job_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adapters.api.paths import route_path
from broker.model.domain import Role
from broker.model.logging import get_logger
from broker.store.api_tokens import ApiTokens

LOG = get_logger("radbridge.web.auth")
REALM = 'Bearer realm="radbridge"'
#: The OpenAPI security scheme of the API tokens (``/docs`` has an "Authorize" button for it).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token (radbridge tokens create --role viewer|operator|admin).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
#: Client addresses that are this host. Behind a reverse proxy on this host, list it in
#: ``http.trusted_proxies`` so that the client's own address is the one seen here.
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def client_host(request: Request) -> str:
    """The client's address: the peer's, or a trusted proxy's ``X-Forwarded-For``
    (uvicorn's proxy headers middleware, set up from ``http.trusted_proxies``)."""
    return request.client.host if request.client else ""


def from_loopback(request: Request) -> bool:
    """Whether the client is on this host."""
    return client_host(request) in LOOPBACK


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def api_tokens(request: Request) -> ApiTokens:
    """The token store of the application serving ``request``."""
    tokens = getattr(request.app.state, "api_tokens", None)
    if not isinstance(tokens, ApiTokens):
        raise RuntimeError("app.state.api_tokens is not set; create the app with create_app")
    return tokens


#: The attribute :func:`site_scoped` sets on an endpoint.
SITE_SCOPED = "radbridge_site_scoped"

E = TypeVar("E", bound=Callable[..., Any])


def site_scoped(endpoint: E) -> E:
    """Mark an endpoint as answering a site-scoped caller with only its sites' rows.

    Every other endpoint answers such a caller 404: a new endpoint is closed to
    site-scoped tokens until it says how it keeps to their sites."""
    setattr(endpoint, SITE_SCOPED, True)
    return endpoint


def hidden() -> HTTPException:
    """What a site-scoped caller gets for another site's record: the same 404 as for a
    record that does not exist (other sites' UIDs cannot be probed)."""
    return HTTPException(404, "not found")


def require(role: Role) -> Callable[..., Role]:
    """A dependency that lets a request in only with a token of ``role`` or higher.

    It returns the token's role, so an endpoint can declare
    ``role: Annotated[Role, Depends(require(Role.VIEWER))]`` and use it.
    Being a plain function, FastAPI runs it in its thread pool (the store is
    synchronous).
    """
    needed = Role(role)

    def check(request: Request, credentials: Credentials) -> Role:
        token = credentials.credentials.strip() if credentials is not None else None
        if not token:
            raise HTTPException(
                401,
                "this endpoint needs Authorization: Bearer <token> "
                "(create one with: radbridge tokens create --role ROLE)",
                headers={"WWW-Authenticate": REALM},
            )
        token_row = api_tokens(request).identify(token)
        found = token_row.role if token_row is not None else None
        if found is None:
            LOG.warning("unknown or revoked API token", path=route_path(request))
            raise HTTPException(
                401,
                "the token is unknown or revoked",
                headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        if not found.allows(needed):
            LOG.warning(
                "API token role too low", path=route_path(request), role=found, needed=needed
            )
            raise HTTPException(
                403,
                f"a {found.value} token cannot do this; it needs the role {needed.value} or higher",
                headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
            )
        if token_row is not None and token_row.sites is not None:
            endpoint = getattr(request.scope.get("route"), "endpoint", None)
            if not getattr(endpoint, SITE_SCOPED, False):
                raise hidden()
        return found

    check.__name__ = f"require_{needed.value}"
    return check
