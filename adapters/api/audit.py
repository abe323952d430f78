"""``/api/v1/audit``: the audit trail, newest first and paged, or exported for a period.

Admins only, as in the console (:data:`broker.model.domain.AUDIT_ROLE`): other tokens get 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel

from adapters.api.deps import AuditReader, State, parse_time, site_scoped
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, id_key
from adapters.api.responses import BAD_CURSOR, invalid
from adapters.api.usage import Format
from broker.store.audit import AuditEntry, export_csv

router = APIRouter(prefix="/audit", tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    peer: str


def _out(e: AuditEntry) -> AuditOut:
    return AuditOut(
        id=e.id,
        at=e.at,
        actor=e.actor,
        action=e.action,
        target=e.target,
        detail=e.detail,
        peer=e.peer,
    )


Since = Annotated[str | None, Query(alias="from", description="At or after (ISO 8601).")]
Until = Annotated[str | None, Query(alias="to", description="Before (a date: through it).")]


@router.get(
    "",
    response_model=Page[AuditOut],
    summary="The audit trail, newest first",
    responses=BAD_CURSOR,
)
@site_scoped
def list_audit(
    *,
    api: State,
    who: AuditReader,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=160)] = None,
    target: Annotated[str | None, Query(max_length=256)] = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[AuditOut]:
    tz = api.settings.site.timezone
    found = api.audit.list(
        before_id=id_key(cursor),
        limit=limit + 1,
        action=action,
        actor=actor,
        target=target,
        start=parse_time(since, tz),
        end=parse_time(until, tz, end=True),
        sites=who.sites,
    )
    page = found[:limit]
    following = encode([page[-1].id]) if len(found) > limit else None
    return Page[AuditOut](items=[_out(e) for e in page], next=following)


@router.get(
    "/export",
    response_model=list[AuditOut],
    summary="Every row of a period, oldest first (JSON, or CSV with format=csv)",
    responses={200: {"content": {"text/csv": {}}}},
)
def export_audit(
    *,
    api: State,
    _who: AuditReader,
    since: Annotated[str, Query(alias="from", min_length=1, description="At or after (ISO 8601).")],
    until: Annotated[
        str, Query(alias="to", min_length=1, description="Before (a date: through it).")
    ],
    format: Format = Format.JSON,
) -> list[AuditOut] | Response:
    tz = api.settings.site.timezone
    start, end = parse_time(since, tz), parse_time(until, tz, end=True)
    assert start is not None and end is not None
    if end <= start:
        raise invalid("to", until, f"from {since} to {until}: valid: to after from")
    entries = api.audit.export(start, end)
    if format is Format.CSV:
        return Response(export_csv(entries), media_type="text/csv; charset=utf-8")
    return [_out(e) for e in entries]
