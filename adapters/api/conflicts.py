"""``/api/v1/conflicts``: identity conflicts, newest first (open ones unless asked); one
conflict; resolving one (operators; audited as ``conflict.resolve``).

A conflict is data that named another patient than the record it would attach to: an
order update for another patient, instances of a study held for another patient, a
vendor result of another patient or study (all refused), an order and a study that
match but name different patients (kept, flagged), an ADT merge that could not be
applied. Resolving one records what the operator did about it; it moves no data (the
HIS corrects a patient with an ADT merge or update, a sender resends corrected data).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from adapters.api.deps import Operator, RowId, RowIdFilter, State, Viewer
from adapters.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, encode, id_key
from adapters.api.responses import BAD_BODY, BAD_CURSOR, NOT_FOUND, error
from adapters.api.schemas import PHI_NOTE
from broker.model.errors import NotFoundError
from broker.model.identity import ConflictKind, ConflictState, IdentityConflict
from broker.model.phi import phi_values, without_phi
from broker.store.conflicts import ConflictResolvedError, ConflictStore

router = APIRouter(prefix="/conflicts", tags=["conflicts"])


class PatientRef(BaseModel):
    """A patient as a record names it: ID and issuer of the ID."""

    patient_id: str | None = Field(description=PHI_NOTE)
    issuer: str | None


class ConflictOut(BaseModel):
    id: int
    kind: str
    action: str = Field(description="refused (a protocol error went back) or flagged (kept).")
    reason: str
    state: str
    subject: str = Field(description="What conflicted: the identifier and its value.")
    matched_on: str
    study_uid: str | None
    order_id: int | None
    held: PatientRef = Field(description="The patient radbridge holds the record for.")
    claimed: PatientRef = Field(description="The patient the message or file named.")
    detail: str
    source: str
    sender: str
    peer: str
    message_id: int | None
    count: int = Field(description="How many times it came while open.")
    first_at: datetime
    last_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class Resolution(BaseModel):
    note: str = Field(
        min_length=1,
        max_length=2000,
        description="What was done about it (e.g. 'RIS corrected the order; resent').",
    )


def conflict_out(c: IdentityConflict, *, phi: bool) -> ConflictOut:
    """The conflict as the caller may see it: without ``phi``, the patient IDs are null and
    taken out of ``subject`` and ``detail``."""
    r = c.report
    hidden = [] if phi else phi_values([r.held, r.claimed])
    return ConflictOut(
        id=c.id,
        kind=r.kind.value,
        action=r.action.value,
        reason=r.reason.value,
        state=c.state.value,
        subject=without_phi(r.subject, hidden),
        matched_on=r.matched_on,
        study_uid=r.study_uid,
        order_id=r.order_id,
        held=PatientRef(patient_id=r.held.patient_id if phi else None, issuer=r.held.issuer),
        claimed=PatientRef(
            patient_id=r.claimed.patient_id if phi else None, issuer=r.claimed.issuer
        ),
        detail=without_phi(r.detail, hidden),
        source=c.source,
        sender=c.sender,
        peer=c.peer,
        message_id=c.message_id,
        count=c.count,
        first_at=c.first_at,
        last_at=c.last_at,
        resolved_at=c.resolved_at,
        resolved_by=c.resolved_by,
        resolution=c.resolution,
    )


@router.get(
    "",
    response_model=Page[ConflictOut],
    summary="Identity conflicts, newest first",
    responses=BAD_CURSOR,
)
def list_conflicts(
    *,
    api: State,
    who: Viewer,
    state: Annotated[
        ConflictState | None, Query(description="open (default) or resolved; all=true for both.")
    ] = None,
    all_states: Annotated[bool, Query(alias="all")] = False,
    kind: ConflictKind | None = None,
    study_uid: Annotated[str | None, Query(max_length=64)] = None,
    order_id: RowIdFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[ConflictOut]:
    found = ConflictStore(api.engine).list(
        state=None if all_states else (state or ConflictState.OPEN),
        kind=kind,
        study_uid=study_uid,
        order_id=order_id,
        before_id=id_key(cursor),
        limit=limit + 1,
    )
    page = found[:limit]
    following = encode([page[-1].id]) if len(found) > limit else None
    items = [conflict_out(c, phi=who.sees_phi) for c in page]
    return Page[ConflictOut](items=items, next=following)


@router.get(
    "/{conflict_id}",
    response_model=ConflictOut,
    summary="One identity conflict",
    responses=NOT_FOUND,
)
def get_conflict(conflict_id: RowId, api: State, who: Viewer) -> ConflictOut:
    try:
        return conflict_out(ConflictStore(api.engine).get(conflict_id), phi=who.sees_phi)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post(
    "/{conflict_id}/resolve",
    response_model=ConflictOut,
    summary="Mark an open conflict resolved, with a note (operator; audited)",
    responses={**BAD_BODY, **NOT_FOUND, 409: error("The conflict was resolved already.")},
)
def resolve_conflict(
    conflict_id: RowId, body: Resolution, api: State, who: Operator
) -> ConflictOut:
    """Records who resolved it, when and the note, in the conflict and the audit trail
    (``conflict.resolve``). No order, study or result changes."""
    try:
        resolved = ConflictStore(api.engine).resolve(
            conflict_id, actor=who.actor, note=body.note, peer=who.peer
        )
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except ConflictResolvedError as exc:
        raise HTTPException(409, str(exc)) from exc
    return conflict_out(resolved, phi=who.sees_phi)
