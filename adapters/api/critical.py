"""``/api/v1/critical``: critical-result cases (open first, overdue ones flagged), one case
with its ledger, and the acknowledgement by a named person (readers and above; audited
as ``critical.ack``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from adapters.api.deps import Caller, RowId, State, Viewer, caller
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, id_key
from adapters.api.responses import BAD_BODY, BAD_CURSOR, NOT_FOUND, error
from broker.model.critical import (
    ACK_ROLE,
    AckVia,
    CaseState,
    CaseStateError,
    CaseStep,
    CriticalCase,
)
from broker.model.errors import NotFoundError
from broker.store.critical import CriticalStore

router = APIRouter(prefix="/critical", tags=["critical"])
#: Who may acknowledge: readers (radiologists, clinicians) and above.
Acknowledger = Annotated[Caller, Depends(caller(ACK_ROLE))]


class FindingOut(BaseModel):
    code: str
    meaning: str
    present: bool | None
    score: float | None


class CaseOut(BaseModel):
    """One critical-result case."""

    id: int
    state: CaseState
    overdue: bool
    """Open past its deadline."""
    study_uid: str
    accession_number: str | None
    result_id: int
    job_id: int | None
    vendor: str | None
    route: str | None
    summary: str
    findings: list[FindingOut]
    opened_at: datetime
    exam_end_at: datetime
    deadline_at: datetime
    level: int
    """The last contact notified (0 is the first of its list; -1: none)."""
    contact_list: str | None = None
    """Its escalation list (of ``critical.lists``: its route's or its site's); None: the
    default ``critical.contacts``."""
    next_escalation_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledged_via: AckVia | None
    minutes_to_ack: float | None
    """From the exam's end to the acknowledgement."""


class StepOut(BaseModel):
    """One row of the ledger: who was notified, when, on which channel; who acknowledged."""

    at: datetime
    kind: str
    level: int | None
    contact: str | None
    channel: str | None
    address: str | None
    delivery_id: int | None
    actor: str | None
    detail: dict[str, Any]


class CaseDetail(CaseOut):
    steps: list[StepOut]


class AckRequest(BaseModel):
    by: str = Field(
        min_length=1, max_length=160, description="The person who acknowledges (name, role)."
    )
    note: str | None = Field(None, max_length=1000)


def case_out(case: CriticalCase, now: datetime) -> CaseOut:
    return CaseOut(**_fields(case, now))


def _fields(case: CriticalCase, now: datetime) -> dict[str, Any]:
    return {
        "id": case.id,
        "state": case.state,
        "overdue": case.overdue(now),
        "study_uid": case.study_uid,
        "accession_number": case.accession_number,
        "result_id": case.result_id,
        "job_id": case.job_id,
        "vendor": case.vendor,
        "route": case.route,
        "contact_list": case.contact_list,
        "summary": case.summary,
        "findings": [
            FindingOut(code=f.code, meaning=f.meaning, present=f.present, score=f.score)
            for f in case.findings
        ],
        "opened_at": case.opened_at,
        "exam_end_at": case.exam_end_at,
        "deadline_at": case.deadline_at,
        "level": case.level,
        "next_escalation_at": case.next_escalation_at,
        "acknowledged_at": case.acknowledged_at,
        "acknowledged_by": case.acknowledged_by,
        "acknowledged_via": case.acknowledged_via,
        "minutes_to_ack": case.minutes_to_ack,
    }


def step_out(s: CaseStep) -> StepOut:
    return StepOut(
        at=s.at,
        kind=s.kind.value,
        level=s.level,
        contact=s.contact,
        channel=s.channel,
        address=s.address,
        delivery_id=s.delivery_id,
        actor=s.actor,
        detail=dict(s.detail),
    )


def _store(api: State) -> CriticalStore:
    return CriticalStore(api.engine)


@router.get(
    "",
    response_model=Page[CaseOut],
    summary="Critical-result cases, newest first",
    responses=BAD_CURSOR,
)
def list_cases(
    *,
    api: State,
    _who: Viewer,
    state: CaseState | None = None,
    overdue: Annotated[bool, Query(description="Only open cases past their deadline.")] = False,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[CaseOut]:
    now = datetime.now(UTC)
    found = _store(api).list(
        state=state,
        overdue_at=now if overdue else None,
        study_uid=study_uid,
        before_id=id_key(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    following = encode([page[-1].id]) if len(found) > limit else None
    return Page[CaseOut](items=[case_out(c, now) for c in page], next=following)


def _detail(api: State, case_id: int) -> CaseDetail:
    store = _store(api)
    try:
        case = store.get(case_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    now = datetime.now(UTC)
    return CaseDetail(**_fields(case, now), steps=[step_out(s) for s in store.steps(case_id)])


@router.get(
    "/{case_id}", response_model=CaseDetail, summary="One case and its ledger", responses=NOT_FOUND
)
def get_case(case_id: RowId, api: State, _who: Viewer) -> CaseDetail:
    """The case and every step: opened, notified (contact, channel, address), sent or
    failed, escalated, exhausted, overdue, acknowledged (by whom, how)."""
    return _detail(api, case_id)


@router.post(
    "/{case_id}/ack",
    response_model=CaseDetail,
    summary="Acknowledge a case by a named person (reader or above)",
    responses={**BAD_BODY, **NOT_FOUND, 409: error("The case was acknowledged already.")},
)
def acknowledge(case_id: RowId, body: AckRequest, api: State, who: Acknowledger) -> CaseDetail:
    """Closes the case and stops its escalation; audited as ``critical.ack``."""
    try:
        _store(api).acknowledge(
            case_id,
            by=body.by,
            via=AckVia.API,
            actor=who.actor,
            peer=who.peer,
            note=body.note,
        )
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except CaseStateError as exc:
        raise HTTPException(409, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _detail(api, case_id)
