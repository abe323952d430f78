"""Jobs by state and vendor; operators retry and cancel jobs and retry write-back deliveries.

Each action is audited (``job.retry``, ``job.cancel``, ``delivery.retry``, actor
``console:NAME``). A form posts and is redirected back to the page it came
from; with htmx the answer is the job's table row, which replaces the old one
and refreshes itself every two seconds until the job settles.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from adapters.api.auth import site_scoped
from adapters.console.auth import Operator, State, peer_of, reading, safe_next
from adapters.console.views import render, translator
from broker.model.domain import Role
from broker.model.errors import NotFoundError
from broker.model.jobs import Job, JobState, JobStateError
from broker.model.writeback import DeliveryStateError
from broker.store.audit import Action
from broker.store.jobs import JOBS
from broker.store.listing import JobFilter
from broker.store.pauses import LanePauses
from broker.store.users import Session

router = APIRouter()
Viewer = Annotated[Session, Depends(reading(Role.VIEWER))]
PAGE = 100
OVERDUE = "overdue"


@router.get("/jobs", name="jobs")
@site_scoped
def jobs(
    *,
    request: Request,
    console: State,
    who: Viewer,
    state: Annotated[str | None, Query(max_length=32)] = None,
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    before: int | None = None,
) -> Response:
    """Jobs, newest first, by state (or ``overdue``) and vendor (a user limited to sites:
    their sites' studies' jobs)."""
    _ = translator(request)
    problem = None
    states: list[JobState] = []
    found: list[Job]
    if state == OVERDUE:
        found = [
            j
            for j in console.deliveries.overdue_jobs(limit=PAGE, sites=who.sites)
            if vendor in (None, "", j.vendor)
        ]
    else:
        if state:
            try:
                states = [JobState(state)]
            except ValueError:
                valid = ", ".join([*JobState, OVERDUE])
                problem = _("no job state {state}; valid: {valid}").format(
                    state=repr(state), valid=valid
                )
        found = console.listing.jobs(
            JobFilter(states=states, vendor=vendor or None, sites=who.sites),
            before_id=before,
            limit=PAGE + 1,
        )
    page = found[:PAGE]
    return render(
        request,
        "jobs.html",
        {
            "jobs": page,
            "state": state or "",
            "vendor": vendor or "",
            "states": [*JobState, OVERDUE],
            "vendors": sorted(console.settings.vendors),
            "pause": LanePauses(console.engine, JOBS).current().get(vendor or ""),
            "problem": problem,
            "following": page[-1].id if len(found) > PAGE else None,
        },
    )


def _row(request: Request, job: Job, notice: str | None = None) -> Response:
    return render(request, "_job_row.html", {"job": job, "notice": notice})


def _job(console: State, who: Session, job_id: int) -> Job:
    """The job, when the user may see its study's site; else as if there were none."""
    job = console.jobs.get(job_id)
    if not console.sees_study(who.sites, job.study_uid):
        raise NotFoundError(f"no job with id {job_id}")
    return job


@router.get("/jobs/{job_id}/row", name="job_row")
@site_scoped
def job_row(request: Request, job_id: int, console: State, who: Viewer) -> Response:
    """One job's table row (htmx refreshes a moving job's row with it)."""
    try:
        return _row(request, _job(console, who, job_id))
    except NotFoundError as exc:
        return Response(str(exc), status_code=404)


def _answer(request: Request, job: Job, notice: str | None, next_page: str) -> Response:
    _ = translator(request)
    if request.headers.get("HX-Request"):
        return _row(request, job, notice)
    if notice is not None:
        return render(
            request,
            "error.html",
            {
                "title": _("Job {id}").format(id=job.id),
                "message": notice,
                "back": safe_next(request, next_page),
            },
            status=409,
        )
    return RedirectResponse(safe_next(request, next_page), status_code=303)


def _act(
    request: Request, console: State, who: Session, job_id: int, *, action: str, next_page: str
) -> Response:
    try:
        before = _job(console, who, job_id)
    except NotFoundError as exc:
        return render(
            request,
            "error.html",
            {"title": translator(request)("No such job"), "message": str(exc)},
            status=404,
        )
    try:
        if action == Action.JOB_RETRY:
            job = console.jobs.retry(job_id)
        else:
            job = console.jobs.cancel(job_id, reason=f"cancelled by {who.subject} in the console")
    except JobStateError as exc:
        return _answer(request, console.jobs.get(job_id), str(exc), next_page)
    console.audit.record(
        who.actor,
        action,
        f"job:{job_id}",
        {"from_state": before.state.value, "to_state": job.state.value, "vendor": job.vendor},
        peer_of(request),
    )
    return _answer(request, job, None, next_page)


Next = Annotated[str, Form(alias="next", max_length=2000)]


@router.post("/jobs/{job_id}/retry", name="job_retry")
@site_scoped
def retry_job(
    request: Request,
    job_id: int,
    console: State,
    who: Operator,
    next_page: Next = "",
) -> Response:
    """Start a dead or failed job over; the running service wakes a worker within a second."""
    return _act(request, console, who, job_id, action=Action.JOB_RETRY, next_page=next_page)


@router.post("/jobs/{job_id}/cancel", name="job_cancel")
@site_scoped
def cancel_job(
    request: Request,
    job_id: int,
    console: State,
    who: Operator,
    next_page: Next = "",
) -> Response:
    """Cancel a job that has not finished."""
    return _act(request, console, who, job_id, action=Action.JOB_CANCEL, next_page=next_page)


@router.post("/deliveries/{delivery_id}/retry", name="delivery_retry")
@site_scoped
def retry_delivery(
    request: Request,
    delivery_id: int,
    console: State,
    who: Operator,
    next_page: Next = "",
) -> Response:
    """Start a dead or failed write-back delivery over (its job goes back to writing_back)."""
    try:
        before = console.deliveries.get(delivery_id)
        if before.job_id is not None:
            _job(console, who, before.job_id)
        elif who.sites is not None:  # of no job: the hub's own (a notification)
            raise NotFoundError(f"no delivery with id {delivery_id}")
        delivery = console.deliveries.retry(delivery_id)
    except NotFoundError as exc:
        return render(
            request,
            "error.html",
            {"title": translator(request)("No such delivery"), "message": str(exc)},
            status=404,
        )
    except DeliveryStateError as exc:
        _ = translator(request)
        back = safe_next(request, next_page)
        return render(
            request,
            "error.html",
            {
                "title": _("Delivery {id}").format(id=delivery_id),
                "message": str(exc),
                "back": back,
            },
            status=409,
        )
    console.audit.record(
        who.actor,
        "delivery.retry",
        f"delivery:{delivery_id}",
        {
            "from_state": before.state.value,
            "to_state": delivery.state.value,
            "target": delivery.target,
            "job_id": delivery.job_id,
        },
        peer_of(request),
    )
    return RedirectResponse(safe_next(request, next_page), status_code=303)
