"""The audit trail (admins): who did what, when and from where, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapters.api.auth import site_scoped
from adapters.console.auth import State, reading
from adapters.console.views import render
from broker.model.domain import AUDIT_ROLE
from broker.store.users import Session

router = APIRouter()
Admin = Annotated[Session, Depends(reading(AUDIT_ROLE))]
AUDIT_PAGE = 100


@router.get("/audit", name="audit")
@site_scoped
def audit(
    *,
    request: Request,
    console: State,
    who: Admin,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=160)] = None,
    before: int | None = None,
) -> Response:
    """The audit trail, newest first (admins; an admin limited to sites: the rows of their
    sites' jobs and write-backs)."""
    found = console.audit.list(
        before_id=before,
        limit=AUDIT_PAGE + 1,
        action=action or None,
        actor=actor or None,
        sites=who.sites,
    )
    page = found[:AUDIT_PAGE]
    return render(
        request,
        "audit.html",
        {
            "entries": page,
            "action": action or "",
            "actor": actor or "",
            "following": page[-1].id if len(found) > AUDIT_PAGE else None,
        },
    )
