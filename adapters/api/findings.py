"""``/api/v1/studies/{uid}/findings``: every product's findings of a study, reconciled.

Each finding with its provenance (vendor, product, version, maker, certificate
where configured, result and job, route, shadow or live), whether its product
owns the finding code on the route (``owner``: true, false, or null when the
route names no owner), whether it disagrees with another product; the study's
``flags`` (``discordant``) and each disagreement. Nothing is left out: shadow
products' findings are listed too (``provenance.shadow``), after the live ones.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from adapters.api.deps import State, Viewer, site_scoped
from adapters.api.responses import NOT_FOUND
from adapters.api.schemas import CodeOut, FindingOut, code_out, finding_out
from broker.model.errors import NotFoundError
from broker.model.reconciliation import StudyFindings
from broker.runtime.findings import FindingsReader

router = APIRouter(prefix="/studies", tags=["studies"])

UID = Annotated[str, Path(max_length=64, pattern=r"^[0-9.]+$")]


class ProvenanceOut(BaseModel):
    vendor: str
    product: str
    version: str | None
    maker: str | None
    certificate: str | None
    result_id: int
    job_id: int | None
    route: str | None
    shadow: bool


class ReadFindingOut(BaseModel):
    finding: FindingOut
    provenance: ProvenanceOut
    owner: bool | None
    """True: its product owns the code on the route; false: another does; null: no owner."""
    discordant: bool


class DiscordanceOut(BaseModel):
    code: CodeOut
    vendors: list[str]
    result_ids: list[int]
    reason: str


class StudyFindingsOut(BaseModel):
    study_uid: str
    flags: list[str]
    discordances: list[DiscordanceOut]
    findings: list[ReadFindingOut]


def study_findings_out(view: StudyFindings) -> StudyFindingsOut:
    return StudyFindingsOut(
        study_uid=view.study_uid,
        flags=[f.value for f in view.flags],
        discordances=[
            DiscordanceOut(
                code=code_out(d.code),
                vendors=list(d.vendors),
                result_ids=list(d.result_ids),
                reason=d.reason,
            )
            for d in view.discordances
        ],
        findings=[
            ReadFindingOut(
                finding=finding_out(f.finding),
                provenance=ProvenanceOut(
                    vendor=f.provenance.vendor,
                    product=f.provenance.product,
                    version=f.provenance.version,
                    maker=f.provenance.maker,
                    certificate=f.provenance.certificate,
                    result_id=f.provenance.result_id,
                    job_id=f.provenance.job_id,
                    route=f.provenance.route,
                    shadow=f.provenance.shadow,
                ),
                owner=f.owner,
                discordant=f.discordant,
            )
            for f in view.findings
        ],
    )


@router.get(
    "/{study_uid}/findings",
    response_model=StudyFindingsOut,
    summary="Every product's findings of a study, with provenance and flags",
    responses=NOT_FOUND,
)
@site_scoped
def get_study_findings(study_uid: UID, api: State, who: Viewer) -> StudyFindingsOut:
    """Owners first, then findings of routes without an owner, then non-owners; shadow
    products last. ``flags`` has ``discordant`` when two live products disagree."""
    who.check_study(api, study_uid)
    try:
        api.studies.get_study(study_uid)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    return study_findings_out(FindingsReader(api.engine, lambda: api.settings)(study_uid))
