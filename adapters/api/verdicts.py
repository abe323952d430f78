"""``/api/v1/results/{id}/findings/{n}/verdict``: a radiologist's verdict on an AI finding
(role reader or higher; audited as ``finding.verdict``), a result's verdicts, and how its
findings compare with the study's final report."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from adapters.api.deps import Reader, RowId, State, Viewer
from adapters.api.responses import BAD_BODY, NOT_FOUND
from broker.model.errors import NotFoundError
from broker.model.reports import MatchBasis, ReportOutcome
from broker.model.verdicts import FindingVerdict, Verdict, VerdictError, VerdictSource
from broker.store.reports import ReportStore
from broker.store.verdicts import VerdictStore

router = APIRouter(tags=["verdicts"])

#: A finding's place in its result's findings (from 0, as ``findings[0]``).
FindingIndex = Annotated[int, PathParam(ge=0, le=10_000)]


class VerdictRequest(BaseModel):
    verdict: Verdict
    corrected_value: str | None = Field(
        None, max_length=500, description="With `modified`: what is right (e.g. `6 mm`)."
    )
    comment: str | None = Field(None, max_length=2000)


class VerdictOut(BaseModel):
    id: int
    result_id: int
    finding_index: int
    vendor: str | None
    code: str
    """The finding's code as ``SYSTEM:VALUE``."""
    verdict: Verdict
    corrected_value: str | None
    comment: str | None
    actor: str
    source: VerdictSource
    at: datetime


def verdict_out(v: FindingVerdict) -> VerdictOut:
    return VerdictOut(
        id=v.id,
        result_id=v.result_id,
        finding_index=v.finding_index,
        vendor=v.vendor,
        code=v.code,
        verdict=v.verdict,
        corrected_value=v.corrected_value,
        comment=v.comment,
        actor=v.actor,
        source=v.source,
        at=v.at,
    )


@router.post(
    "/results/{result_id}/findings/{n}/verdict",
    response_model=VerdictOut,
    status_code=201,
    summary="A radiologist's verdict on an AI finding (reader)",
    responses={**BAD_BODY, **NOT_FOUND},
)
def give_verdict(
    result_id: RowId, n: FindingIndex, body: VerdictRequest, api: State, who: Reader
) -> VerdictOut:
    """``accepted``, ``rejected`` or ``modified`` (with ``corrected_value``) on finding ``n``
    (from 0) of the result. Every verdict is kept; the newest counts in the vendor's
    performance. Audited (``finding.verdict``). 404: no such result or finding."""
    try:
        made = VerdictStore(api.engine).record(
            result_id,
            n,
            body.verdict,
            actor=who.actor,
            source=VerdictSource.API,
            corrected_value=body.corrected_value,
            comment=body.comment,
            peer=who.peer,
        )
    except (NotFoundError, VerdictError) as exc:
        raise HTTPException(404, str(exc)) from exc
    return verdict_out(made)


@router.get(
    "/results/{result_id}/verdicts",
    response_model=list[VerdictOut],
    summary="Every verdict on a result's findings, oldest first (reader)",
    responses=NOT_FOUND,
)
def list_verdicts(result_id: RowId, api: State, _who: Reader) -> list[VerdictOut]:
    try:
        api.results.get(result_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    return [verdict_out(v) for v in VerdictStore(api.engine).history(result_id)]


class ReportMatchOut(BaseModel):
    finding_index: int
    code: str
    outcome: ReportOutcome
    basis: MatchBasis
    """``coded``: a coded observation of the report decided; ``keywords``: its text."""
    evidence: str | None
    """The clause or observation that decided (null for viewers: report text)."""
    report_id: int


@router.get(
    "/results/{result_id}/report-matches",
    response_model=list[ReportMatchOut],
    summary="How the result's findings compare with the study's final report",
    responses=NOT_FOUND,
)
def report_matches(result_id: RowId, api: State, who: Viewer) -> list[ReportMatchOut]:
    """Per finding: ``confirmed``, ``contradicted`` or ``not_mentioned`` by the newest final
    report of the study; empty while no report has come."""
    try:
        api.results.get(result_id)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    found = ReportStore(api.engine).current([result_id])
    return [
        ReportMatchOut(
            finding_index=n,
            code=m.code,
            outcome=m.outcome,
            basis=m.basis,
            evidence=m.evidence if who.sees_phi else None,
            report_id=m.report_id,
        )
        for (_, n), m in sorted(found.items())
    ]
