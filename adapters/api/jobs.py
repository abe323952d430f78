"""``/api/v1/jobs``: vendor jobs filtered by state, vendor, study, route and date; one job
with its full history; retry and cancel (operators; each audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, Field

from adapters.api.deps import Caller, Operator, RowId, State, Viewer, parse_time, site_scoped
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, id_key
from adapters.api.responses import BAD_BODY, BAD_CURSOR, NOT_FOUND, error
from adapters.api.schemas import JobDetail, JobOut, event_out, job_fields, job_out
from broker.model.errors import NotFoundError
from broker.model.jobs import JobState, JobStateError
from broker.store.audit import Action
from broker.store.listing import JobFilter

router = APIRouter(prefix="/jobs", tags=["jobs"])


class CancelRequest(BaseModel):
    reason: str = Field("cancelled by operator", max_length=500)


@router.get("", response_model=Page[JobOut], summary="Jobs, newest first", responses=BAD_CURSOR)
@site_scoped
def list_jobs(
    *,
    api: State,
    who: Viewer,
    state: Annotated[list[JobState] | None, Query(description="Repeatable.")] = None,
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    route: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[
        str | None, Query(alias="from", description="Created at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, Query(alias="to", description="Created before (a date: through it).")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[JobOut]:
    tz = api.settings.site.timezone
    found = api.listing.jobs(
        JobFilter(
            states=state or (),
            vendor=vendor,
            study_uid=study_uid,
            route=route,
            since=parse_time(since, tz),
            until=parse_time(until, tz, end=True),
            sites=who.sites,
        ),
        before_id=id_key(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    following = encode([page[-1].id]) if len(found) > limit else None
    return Page[JobOut](items=[job_out(j) for j in page], next=following)


def _detail(api: State, job_id: int, who: Caller) -> JobDetail:
    try:
        job = api.jobs.get(job_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    who.check_study(api, job.study_uid)
    return JobDetail(**job_fields(job), history=[event_out(e) for e in api.jobs.history(job_id)])


@router.get(
    "/{job_id}",
    response_model=JobDetail,
    summary="One job and its history",
    responses=NOT_FOUND,
)
@site_scoped
def get_job(job_id: RowId, api: State, who: Viewer) -> JobDetail:
    """The job and every transition (time, from, to, attempt, error), oldest first."""
    return _detail(api, job_id, who)


def _act(api: State, who: Caller, job_id: int, action: str, reason: str | None) -> JobDetail:
    try:
        before = api.jobs.get(job_id)
        who.check_study(api, before.study_uid)
        if action == Action.JOB_RETRY:
            job = api.jobs.retry(job_id)
        else:
            job = api.jobs.cancel(job_id, reason=reason or "cancelled by operator")
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except JobStateError as exc:
        raise HTTPException(409, str(exc)) from exc
    detail = {"from_state": before.state.value, "to_state": job.state.value, "vendor": job.vendor}
    if reason:
        detail["reason"] = reason
    api.audit.record(who.actor, action, f"job:{job_id}", detail, who.peer)
    return _detail(api, job_id, who)


@router.post(
    "/{job_id}/retry",
    response_model=JobDetail,
    summary="Start a dead or failed job over (operator)",
    responses={**NOT_FOUND, 409: error("The job is not dead or failed.")},
)
@site_scoped
def retry_job(job_id: RowId, api: State, who: Operator) -> JobDetail:
    """The running service wakes a worker for it within a second."""
    return _act(api, who, job_id, Action.JOB_RETRY, None)


@router.post(
    "/{job_id}/cancel",
    response_model=JobDetail,
    summary="Cancel a job that has not finished (operator)",
    responses={**BAD_BODY, **NOT_FOUND, 409: error("The job is finished (done or cancelled).")},
)
@site_scoped
def cancel_job(
    job_id: RowId, api: State, who: Operator, body: Annotated[CancelRequest | None, Body()] = None
) -> JobDetail:
    return _act(api, who, job_id, Action.JOB_CANCEL, (body or CancelRequest()).reason)
