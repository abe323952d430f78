"""``/api/v1/results`` and ``/api/v1/deliveries``: what vendors returned and where it was
written back. Results filtered by study, vendor, state and orphans; one result with its
objects, findings and deliveries; deliveries filtered by state, target, result and job; one
delivery with its history; retry of a dead or failed delivery (operators; audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from adapters.api.deps import (
    Caller,
    Operator,
    RowId,
    RowIdFilter,
    State,
    Viewer,
    hidden,
    site_scoped,
)
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, id_key
from adapters.api.responses import BAD_CURSOR, NOT_FOUND, error
from adapters.api.schemas import (
    DeliveryDetail,
    DeliveryOut,
    ResultDetail,
    ResultObjectOut,
    ResultOut,
    delivery_event_out,
    delivery_fields,
    delivery_out,
    findings_out,
    product_out,
    result_fields,
    result_out,
)
from broker.model.domain import ResultState
from broker.model.errors import NotFoundError
from broker.model.writeback import DeliveryKind, DeliveryState, DeliveryStateError
from broker.store.audit import Action
from broker.store.listing import DeliveryFilter, ResultFilter

router = APIRouter()


@router.get(
    "/results",
    response_model=Page[ResultOut],
    tags=["results"],
    summary="Results, newest first",
    responses=BAD_CURSOR,
)
@site_scoped
def list_results(
    *,
    api: State,
    who: Viewer,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    state: ResultState | None = None,
    orphan: Annotated[
        bool | None,
        Query(description="true: only results that matched no job; false: only those that did."),
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[ResultOut]:
    found = api.listing.results(
        ResultFilter(
            study_uid=study_uid, vendor=vendor, state=state, orphan=orphan, sites=who.sites
        ),
        before_id=id_key(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    following = encode([page[-1].id]) if len(found) > limit else None
    today = api.today()
    return Page[ResultOut](
        items=[result_out(r, product_out(api.settings, r.vendor, today)) for r in page],
        next=following,
    )


@router.get(
    "/results/{result_id}",
    response_model=ResultDetail,
    tags=["results"],
    summary="One result: its objects, findings and write-back deliveries",
    responses=NOT_FOUND,
)
@site_scoped
def get_result(result_id: RowId, api: State, who: Viewer) -> ResultDetail:
    """The objects oldest first (``receive_count``: how often the vendor sent each), the
    findings, and every delivery of the result (write-backs and notifications)."""
    try:
        result = api.results.get(result_id)
        extra = api.results.detail(result_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    who.check_study(api, result.study_uid)
    counts: dict[str, int] = extra["receive_counts"]
    made = api.deliveries.list(result_id=result_id, limit=1000)
    return ResultDetail(
        **result_fields(result),
        product=product_out(api.settings, result.vendor, api.today()),
        calling_ae=extra["calling_ae"],
        complete_reason=extra["complete_reason"],
        error=extra["error"],
        due_at=extra["due_at"],
        object_list=[
            ResultObjectOut(
                sop_instance_uid=o.sop_instance_uid,
                sop_class_uid=o.sop_class_uid,
                series_uid=o.series_uid,
                study_uid=o.study_uid,
                size=o.size,
                origin=o.origin.value,
                receive_count=counts.get(o.sop_instance_uid, 1),
            )
            for o in result.objects
        ],
        findings_summary=findings_out(result.findings) if result.findings else None,
        deliveries=[delivery_out(d) for d in made],
    )


@router.get(
    "/deliveries",
    response_model=Page[DeliveryOut],
    tags=["deliveries"],
    summary="Write-back deliveries and notifications, newest first",
    responses=BAD_CURSOR,
)
@site_scoped
def list_deliveries(
    *,
    api: State,
    who: Viewer,
    state: Annotated[list[DeliveryState] | None, Query(description="Repeatable.")] = None,
    target: Annotated[str | None, Query(max_length=64)] = None,
    result_id: RowIdFilter = None,
    job_id: RowIdFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[DeliveryOut]:
    found = api.listing.deliveries(
        DeliveryFilter(
            states=state or (),
            target=target,
            result_id=result_id,
            job_id=job_id,
            sites=who.sites,
        ),
        before_id=id_key(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    following = encode([page[-1].id]) if len(found) > limit else None
    return Page[DeliveryOut](items=[delivery_out(d) for d in page], next=following)


def _detail(api: State, delivery_id: int, who: Caller) -> DeliveryDetail:
    try:
        delivery = api.deliveries.get(delivery_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    _check_delivery(api, who, delivery.job_id)
    history = api.deliveries.history(delivery_id)
    return DeliveryDetail(
        **delivery_fields(delivery), history=[delivery_event_out(e) for e in history]
    )


def _check_delivery(api: State, who: Caller, job_id: int | None) -> None:
    """404 unless the caller sees the site of the delivery's study (a delivery of no job,
    a notification of the hub, is the hub's)."""
    if who.sites is None:
        return
    if job_id is None:
        raise hidden()
    try:
        who.check_study(api, api.jobs.get(job_id).study_uid)
    except NotFoundError as exc:
        raise hidden() from exc


@router.get(
    "/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    tags=["deliveries"],
    summary="One delivery and its history",
    responses=NOT_FOUND,
)
@site_scoped
def get_delivery(delivery_id: RowId, api: State, who: Viewer) -> DeliveryDetail:
    """The delivery and every transition (time, from, to, attempt, error), oldest first."""
    return _detail(api, delivery_id, who)


@router.post(
    "/deliveries/{delivery_id}/retry",
    response_model=DeliveryDetail,
    tags=["deliveries"],
    summary="Start a dead or failed delivery over (operator)",
    responses={**NOT_FOUND, 409: error("The delivery is not dead or failed.")},
)
@site_scoped
def retry_delivery(delivery_id: RowId, api: State, who: Operator) -> DeliveryDetail:
    """The delivery goes back to ``pending`` with its attempts reset (the same message id);
    a job that went dead because of it goes back to ``writing_back``. The running service
    sends it within a second."""
    try:
        before = api.deliveries.get(delivery_id)
        _check_delivery(api, who, before.job_id)
        delivery = api.deliveries.retry(delivery_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except DeliveryStateError as exc:
        raise HTTPException(409, str(exc)) from exc
    detail = {
        "from_state": before.state.value,
        "to_state": delivery.state.value,
        "target": delivery.target,
        "job_id": delivery.job_id,
    }
    if delivery.kind is not DeliveryKind.RESULT:
        detail["kind"] = delivery.kind.value
    api.audit.record(who.actor, Action.DELIVERY_RETRY, f"delivery:{delivery_id}", detail, who.peer)
    return _detail(api, delivery_id, who)
