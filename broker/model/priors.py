"""Prior studies of the same patient, fetched from the PACS before a job is sent.

A route with ``priors:`` asks for up to ``count`` earlier studies of the
patient (the same patient ID *and* issuer; never another patient's), of the
same modality and body part when it says so, no older than ``max_age``. The
job worker fetches them from the route's ``source`` (a ``dicom`` target: C-FIND
then C-GET; a ``dicomweb`` one: QIDO-RS then WADO-RS) into the spool's
``priors`` folder, once per job, and sends them along with the study. A PACS
that is slow or down delays the job by at most ``wait``; then the study goes
without priors, and the job's history says why.

Fetched priors are spooled but never indexed as studies: they are written by
the fetcher (not the listener) under ``SPOOL/priors/job-ID/``, so no
completion timer sees them and no route is ever evaluated on them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.model.domain import Study

PRIOR_SOURCES = ("dicom", "dicomweb")
"""The target types a route's ``priors.source`` may name."""


@dataclass(frozen=True, slots=True)
class PriorsPolicy:
    """What a route asks for (``routes[].priors``), and where it comes from."""

    source: str
    """The target name of the PACS asked for the priors."""
    source_type: str
    """That target's type (``dicom`` or ``dicomweb``)."""
    source_params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The target's settings (its address; a token in clear: never logged)."""
    count: int = 1
    same_modality: bool = True
    body_part: bool = False
    """Only priors showing the same body part (a series-level query)."""
    max_age_days: float | None = None
    wait: float = 30.0
    """Seconds the job waits for the PACS at most; then it goes without priors."""


@dataclass(frozen=True, slots=True)
class PriorsQuery:
    """Whose priors: the current study's identity, as the store holds it."""

    study_uid: str
    patient_id: str
    issuer: str
    """The issuer of the patient ID ('' when the study has none): part of the match."""
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    study_date: str | None

    @classmethod
    def of(cls, study: Study) -> PriorsQuery | None:
        """The query for ``study``; None when it has no patient ID (no safe match)."""
        if not study.patient.patient_id:
            return None
        return cls(
            study_uid=study.study_uid,
            patient_id=study.patient.patient_id,
            issuer=study.patient.issuer or "",
            modalities=study.modalities,
            body_parts=study.body_parts,
            study_date=study.study_date,
        )


@dataclass(frozen=True, slots=True)
class PriorInstance:
    """One instance of a prior on disk, as radbridge's WADO-RS serves it to a vendor that
    pulls by manifest."""

    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class FetchedPrior:
    """One prior study on disk."""

    study_uid: str
    study_date: str
    files: tuple[Path, ...]
    refused: int = 0
    """Instances the PACS sent that named another patient (dropped, never sent on)."""
    instances: tuple[PriorInstance, ...] = ()
    """The files' UIDs and transfer syntax (what a vendor pulling by manifest is served)."""


@dataclass(frozen=True, slots=True)
class PriorsFetched:
    """What a fetch brought: the priors, and one line for the job's history."""

    priors: tuple[FetchedPrior, ...] = ()
    note: str = ""

    @property
    def files(self) -> list[Path]:
        return [path for prior in self.priors for path in prior.files]


class PriorsOutcome(enum.StrEnum):
    """How a job's fetch of priors ended (the time ledger's stamp)."""

    FETCHED = "fetched"
    """At least one prior came."""
    SKIPPED = "skipped"
    """None came: none found, the PACS slow or down, or none wanted for this vendor."""


FetchPriors = Callable[[PriorsQuery, PriorsPolicy, Path], PriorsFetched]
"""``(query, policy, empty folder) -> priors``: the ``priors_TYPE`` entry point of
``radbridge.registries`` for a source of target type TYPE. It returns within
``policy.wait`` seconds and never raises for a PACS that is slow, down or
refuses: it says so in ``note``."""
