"""``/api/v1/alerts``: what the vendor watch raised about AI products (``drift``,
``version_changed``, ``results_missing``, ``canary_failed``), newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from adapters.api.deps import State, Viewer, parse_time
from broker.model.alerts import AlertKind
from broker.store.alerts import AlertStore

router = APIRouter(prefix="/alerts", tags=["alerts"])


class AlertOut(BaseModel):
    id: int
    kind: AlertKind
    vendor: str
    code: str | None
    """The finding code of a drift."""
    raised_at: datetime
    summary: str | None
    detail: dict[str, Any]


@router.get("", response_model=list[AlertOut], summary="Vendor alerts, newest first")
def list_alerts(
    *,
    api: State,
    _who: Viewer,
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    kind: AlertKind | None = None,
    since: Annotated[str | None, Query(alias="from", description="Raised at or after.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[AlertOut]:
    start = parse_time(since, api.settings.site.timezone)
    found = AlertStore(api.engine).list(vendor=vendor, kind=kind, since=start, limit=limit)
    return [
        AlertOut(
            id=a.id,
            kind=a.kind,
            vendor=a.vendor,
            code=a.code,
            raised_at=a.raised_at,
            summary=str(a.detail["summary"]) if a.detail.get("summary") else None,
            detail=a.detail,
        )
        for a in found
    ]
