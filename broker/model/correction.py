"""Corrections: what radbridge wrote back is withdrawn or corrected when its basis changed.

A **correction** is one event that changes what results of a study were based on:

- ``rejected``: an IOCM Rejection Note (a Key Object Selection whose title is a
  rejection reason, e.g. DCM 113001 "Rejected for Quality Reasons") arrived by
  C-STORE for instances a result was made from;
- ``patient_changed``: an ADT merge (A40) or update (A08) changed the study's patient
  after results were written;
- ``order_cancelled``: the study's order was cancelled (or discontinued) after results
  were written.

Each correction makes, per result already written to a target, one delivery of kind
``correction`` on the one job engine (retries, backoff, dead, operator retry, history).
The target withdraws what it wrote (``withdraw``: a Rejection Note for radbridge's
own objects, an ORU with result status X/D, FHIR ``entered-in-error``) or, for a
patient change, writes it again under the right patient (``amend``: corrected objects
with new UIDs plus a Rejection Note for the old ones, ORU status C, FHIR ``amended``).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.model.domain import Code, CodedValue


class CorrectionCause(CodedValue):
    """Why results of a study are corrected."""

    REJECTED = "rejected"
    PATIENT_CHANGED = "patient_changed"
    ORDER_CANCELLED = "order_cancelled"

    @property
    def withdraws(self) -> bool:
        """True: what was written is withdrawn; False: it is written again, corrected."""
        return self is not CorrectionCause.PATIENT_CHANGED


REJECTED_FOR_QUALITY = Code("DCM", "113001", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY = Code("DCM", "113037", "Rejected for Patient Safety Reasons")
INCORRECT_WORKLIST_ENTRY = Code("DCM", "113038", "Incorrect Modality Worklist Entry")
DATA_RETENTION_EXPIRED = Code("DCM", "113039", "Data Retention Policy Expired")

#: The Key Object Selection titles that make a KOS an IOCM Rejection Note (CID 7011).
REJECTION_TITLES: Mapping[str, Code] = {
    c.value: c
    for c in (
        REJECTED_FOR_QUALITY,
        REJECTED_FOR_PATIENT_SAFETY,
        INCORRECT_WORKLIST_ENTRY,
        DATA_RETENTION_EXPIRED,
    )
}


def rejection_title(system: str | None, value: str | None) -> Code | None:
    """The rejection reason a KOS title names, or None when it is no rejection title."""
    if system != "DCM" or value is None:
        return None
    return REJECTION_TITLES.get(value)


def default_reason(cause: CorrectionCause) -> Code:
    """The title of radbridge's own Rejection Note when the cause brings none: a patient
    change or a cancelled order means the objects were made for the wrong worklist entry."""
    if cause is CorrectionCause.REJECTED:
        return REJECTED_FOR_QUALITY
    return INCORRECT_WORKLIST_ENTRY


@dataclass(frozen=True, slots=True)
class RejectionNote:
    """An IOCM Rejection Note as received: its reason and the instances it rejects.

    ``series`` maps each rejected Series Instance UID to its rejected SOP Instance UIDs.
    """

    study_uid: str
    sop_instance_uid: str
    reason: Code
    series: Mapping[str, Sequence[str]]

    @property
    def instance_count(self) -> int:
        return sum(len(v) for v in self.series.values())


def made_from(job_series: Sequence[str], rejected_series: Sequence[str]) -> bool:
    """Whether a job that sent ``job_series`` (empty: the whole study) used any series the
    note rejects."""
    if not rejected_series:
        return False
    return not job_series or bool(set(job_series) & set(rejected_series))


@dataclass(frozen=True, slots=True, kw_only=True)
class Correction:
    """One correction as the store holds it (``corrections`` table)."""

    id: int
    study_uid: str
    cause: CorrectionCause
    reason: Code
    """The title radbridge's Rejection Note carries."""
    source: str
    """What told radbridge (``C-STORE from CT01``, ``ADT^A40 <control id>``, ``order 12``)."""
    created_at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)
