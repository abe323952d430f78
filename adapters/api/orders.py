"""``/api/v1/orders``: orders from the RIS (HL7 or FHIR), newest update first; one order
with its studies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from adapters.api.deps import State, Viewer, hidden, site_scoped
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, time_key
from adapters.api.responses import BAD_CURSOR, NOT_FOUND
from adapters.api.schemas import OrderDetail, OrderOut, link_out, order_fields, order_out
from broker.model.domain import OrderStatus
from broker.model.errors import NotFoundError

router = APIRouter(prefix="/orders", tags=["orders"])


@router.get(
    "",
    response_model=Page[OrderOut],
    summary="Orders, newest update first",
    responses=BAD_CURSOR,
)
@site_scoped
def list_orders(
    *,
    api: State,
    who: Viewer,
    status: OrderStatus | None = None,
    accession_number: Annotated[str | None, Query(max_length=64)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[OrderOut]:
    who.search_phi(patient_id=patient_id)
    found = api.listing.orders(
        status=status.value if status else None,
        accession_number=accession_number,
        patient_id=patient_id,
        after=time_key(cursor),
        limit=limit + 1,
        sites=who.sites,
    )
    page = found[:limit]
    following = None
    if len(found) > limit:
        following = encode([page[-1].updated_at, page[-1].id])
    return Page[OrderOut](items=[order_out(o, phi=who.sees_phi) for o in page], next=following)


@router.get("/{key}", response_model=OrderDetail, summary="One order", responses=NOT_FOUND)
@site_scoped
def get_order(key: str, api: State, who: Viewer) -> OrderDetail:
    """By id, FHIR resource id or accession number; with the studies linked to it."""
    try:
        stored = api.orders.get(key)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    if not who.sees_site(stored.order.site):
        raise hidden()
    return OrderDetail(
        **order_fields(stored, phi=who.sees_phi),
        studies=[link_out(link) for link in api.orders.linked_studies(stored.id)],
    )
