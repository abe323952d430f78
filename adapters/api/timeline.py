"""``/api/v1/studies/{uid}/timeline``: a study's time ledger; ``/api/v1/reports/turnaround``:
door-to-result times per route over a period (JSON, or CSV with ``format=csv``)."""

from __future__ import annotations

import enum
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from adapters.api.deps import State, Viewer, parse_time, site_scoped
from adapters.api.responses import NOT_FOUND, invalid
from broker.model.errors import NotFoundError
from broker.model.timeline import (
    INTERVALS,
    STAMP_COLUMNS,
    TURNAROUND_COLUMNS,
    as_csv,
    stamp_json,
    summarize,
    summary_json,
    turnaround_json,
)
from broker.store.timeline import study_timeline, turnaround

router = APIRouter(tags=["timeline"])

UID = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$")]
#: The longest period one turnaround report covers.
MAX_DAYS = 366


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


class StampOut(BaseModel):
    at: str
    kind: str
    subject: str | None
    reason: str | None
    detail: str | None
    job_id: int | None


class TimelineOut(BaseModel):
    study_uid: str
    stamps: list[StampOut]


class IntervalOut(BaseModel):
    """How many jobs reached the step, and seconds from the study's first instance."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None


class RouteTurnaroundOut(BaseModel):
    route: str
    jobs: int
    door_to_complete: IntervalOut
    door_to_sent: IntervalOut
    door_to_result: IntervalOut
    door_to_written_back: IntervalOut


class JobTurnaroundOut(BaseModel):
    study_uid: str
    route: str
    vendor: str
    priority: str
    state: str
    first_instance: str
    complete: str | None
    complete_reason: str | None
    routed: str
    sent: str | None
    result: str | None
    written_back: str | None
    door_to_complete_seconds: float | None
    door_to_sent_seconds: float | None
    door_to_result_seconds: float | None
    door_to_written_back_seconds: float | None


class TurnaroundOut(BaseModel):
    """Per route, p50/p95/max seconds from a study's first instance to each step; the jobs."""

    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    intervals: list[str]
    routes: list[RouteTurnaroundOut]
    jobs: list[JobTurnaroundOut]


def _csv(text: str, name: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


@router.get(
    "/studies/{study_uid}/timeline",
    response_model=TimelineOut,
    summary="A study's time ledger (JSON, or CSV with format=csv)",
    responses={**NOT_FOUND, 200: {"content": {"text/csv": {}}}},
)
@site_scoped
def timeline(
    study_uid: UID, api: State, who: Viewer, format: Format = Format.JSON
) -> TimelineOut | Response:
    """First and last instance, complete (and what decided it), routed, sent to each
    vendor, result received, written back to each target, notifications; time order."""
    who.check_study(api, study_uid)
    try:
        stamps = study_timeline(api.engine, study_uid)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    rows = [stamp_json(s) for s in stamps]
    if format is Format.CSV:
        return _csv(as_csv(STAMP_COLUMNS, rows), f"timeline-{study_uid}")
    return TimelineOut(study_uid=study_uid, stamps=[StampOut(**r) for r in rows])


@router.get(
    "/reports/turnaround",
    response_model=TurnaroundOut,
    summary="Door-to-result times per route (JSON, or the job rows as CSV with format=csv)",
    responses={200: {"content": {"text/csv": {}}}},
)
def turnaround_report(
    *,
    api: State,
    _who: Viewer,
    since: Annotated[
        str, Query(alias="from", description="Studies first received at or after (ISO 8601).")
    ],
    until: Annotated[str, Query(alias="to", description="Before this time (a date: through it).")],
    format: Format = Format.JSON,
) -> TurnaroundOut | Response:
    """Per route: how many jobs, and p50/p95/max seconds from the study's first instance to
    complete, sent, result and written back; and one row per job."""
    tz = api.settings.site.timezone
    start, end = parse_time(since, tz), parse_time(until, tz, end=True)
    if start is None:
        raise invalid("from", since, "valid: an ISO 8601 time or date, e.g. 2024-05-01")
    if end is None:
        raise invalid("to", until, "valid: an ISO 8601 time or date, e.g. 2024-05-31")
    if end <= start or (end - start).days > MAX_DAYS:
        raise invalid("to", until, f"valid: after from, at most {MAX_DAYS} days after it")
    rows = turnaround(api.engine, start, end)
    if format is Format.CSV:
        text = as_csv(TURNAROUND_COLUMNS, [turnaround_json(r) for r in rows])
        return _csv(text, f"turnaround-{start.date()}-{end.date()}")
    return TurnaroundOut.model_validate(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "intervals": [f"door_to_{name}" for name in INTERVALS],
            "routes": [summary_json(s) for s in summarize(rows)],
            "jobs": [turnaround_json(r) for r in rows],
        }
    )
