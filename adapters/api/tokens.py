"""``/api/v1/tokens`` (admins): list, create and revoke API tokens; each change audited."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from adapters.api.auth import api_tokens
from adapters.api.deps import Admin, RowId, State
from adapters.api.responses import BAD_BODY, NOT_FOUND, invalid
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.store.api_tokens import ApiToken
from broker.store.audit import Action

router = APIRouter(prefix="/tokens", tags=["tokens"])


class TokenOut(BaseModel):
    id: int
    role: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    sites: list[str] | None = None
    """The sites it is limited to; null: every site."""


class NewToken(BaseModel):
    role: Role
    name: str | None = Field(None, max_length=128)
    sites: list[str] | None = Field(None, min_length=1, max_length=1000)
    """Limit it to these sites (ids of ``sites:``); null: every site."""


class CreatedToken(TokenOut):
    token: str
    """Shown once: the store keeps only its SHA-256."""


def _out(t: ApiToken) -> TokenOut:
    return TokenOut(
        id=t.id,
        role=t.role.value,
        name=t.name,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked_at=t.revoked_at,
        sites=sorted(t.sites) if t.sites is not None else None,
    )


@router.get("", response_model=list[TokenOut], summary="Every token, never the token itself")
def list_tokens(request: Request, _who: Admin) -> list[TokenOut]:
    return [_out(t) for t in api_tokens(request).list()]


@router.post(
    "",
    response_model=CreatedToken,
    status_code=201,
    summary="Create a token",
    responses=BAD_BODY,
)
def create_token(body: NewToken, request: Request, api: State, who: Admin) -> CreatedToken:
    tokens = api_tokens(request)
    unknown = [s for s in body.sites or () if s not in api.settings.sites]
    if unknown:
        valid = ", ".join(api.settings.sites) or "none (no sites: block)"
        raise invalid("sites", unknown[0], f"unknown site {unknown[0]!r}; valid: {valid}", "body")
    secret = tokens.create(body.role, body.name, sites=body.sites)
    made = tokens.identify(secret)
    assert made is not None
    detail: dict[str, object] = {"role": made.role.value, "name": made.name}
    if made.sites is not None:
        detail["sites"] = sorted(made.sites)
    api.audit.record(who.actor, Action.TOKEN_CREATE, f"token:{made.id}", detail, who.peer)
    return CreatedToken(**_out(made).model_dump(), token=secret)


@router.delete(
    "/{token_id}", response_model=TokenOut, summary="Revoke a token", responses=NOT_FOUND
)
def revoke_token(token_id: RowId, request: Request, api: State, who: Admin) -> TokenOut:
    try:
        token = api_tokens(request).revoke(token_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    api.audit.record(
        who.actor,
        Action.TOKEN_REVOKE,
        f"token:{token_id}",
        {"role": token.role.value, "name": token.name},
        who.peer,
    )
    return _out(token)
