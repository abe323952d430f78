"""``/api/v1/studies``: received studies, filtered and paged; one study with its series,
order and jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from adapters.api.deps import State, Viewer, hidden, parse_time, site_scoped
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, time_key
from adapters.api.responses import BAD_CURSOR, NOT_FOUND
from adapters.api.schemas import (
    StudyDetail,
    StudyOut,
    job_out,
    link_out,
    order_fields,
    series_out,
    study_fields,
    study_out,
)
from broker.model.domain import LinkState, StudyState
from broker.model.errors import NotFoundError
from broker.store.listing import StudyFilter

router = APIRouter(prefix="/studies", tags=["studies"])

UID = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$")]


@router.get(
    "",
    response_model=Page[StudyOut],
    summary="Studies, newest activity first",
    responses=BAD_CURSOR,
)
@site_scoped
def list_studies(
    *,
    api: State,
    who: Viewer,
    state: StudyState | None = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    accession_number: Annotated[str | None, Query(max_length=64)] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[
        str | None, Query(alias="from", description="Last received at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, Query(alias="to", description="Last received before (a date: through it).")
    ] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[StudyOut]:
    who.search_phi(patient_id=patient_id)
    tz = api.settings.site.timezone
    found = api.listing.studies(
        StudyFilter(
            state=state,
            modality=modality,
            accession_number=accession_number,
            patient_id=patient_id,
            since=parse_time(since, tz),
            until=parse_time(until, tz, end=True),
            sites=who.sites,
        ),
        after=time_key(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    following = None
    if len(found) > limit:
        last = page[-1]
        key = api.listing.study_keys([last.study_uid])[last.study_uid]
        following = encode([key[0], key[1]])
    return Page[StudyOut](items=[study_out(s, phi=who.sees_phi) for s in page], next=following)


@router.get("/{study_uid}", response_model=StudyDetail, summary="One study", responses=NOT_FOUND)
@site_scoped
def get_study(study_uid: UID, api: State, who: Viewer) -> StudyDetail:
    """The study, its series, its linked (or flagged) order and its jobs."""
    try:
        study = api.studies.get_study(study_uid)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    if not who.sees_site(study.site):
        raise hidden()
    link = api.orders.link(study_uid)
    order = None
    if link is not None and link.state is LinkState.LINKED:
        order = order_fields(api.orders.get(link.order_id), phi=who.sees_phi)
    return StudyDetail(
        **study_fields(study, phi=who.sees_phi),
        series=[series_out(s) for s in study.series],
        order_link=link_out(link) if link is not None else None,
        order=order,
        jobs=[job_out(j) for j in api.jobs.list(study_uid=study_uid)],
    )
