"""Identity safety: when two records name different patients, and what radbridge did about it.

Nothing a message, a file or an operator sends moves an order, a study or a
result from one patient to another; only an ADT merge (A40) or update (A08)
changes who a record belongs to, and both are audited. Whatever would do so
is either refused at the protocol (HL7 AE, FHIR 409, DICOM failure status) or
kept and flagged (an order and a study that match but name different
patients); both are an :class:`IdentityConflict` an operator can list and
resolve.

Two patients are the same when their IDs are equal and, where both records
name an issuer of the ID, the issuers are equal too; a record without a
patient ID names nobody and conflicts with no one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from broker.model.domain import CodedValue, Patient
from broker.model.errors import RadbridgeError


def patient_conflict(held: Patient, claimed: Patient) -> str | None:
    """Why ``claimed`` is not the patient ``held``, or None when they may be the same."""
    if not held.patient_id or not claimed.patient_id:
        return None
    if held.patient_id != claimed.patient_id:
        return "the patient ID differs"
    if held.issuer and claimed.issuer and held.issuer != claimed.issuer:
        return "the issuer of the patient ID differs"
    return None


class ConflictKind(CodedValue):
    """What would have attached data to another patient."""

    ORDER_PATIENT = "order_patient"
    """An order message names another patient than the order (or accession number) it
    updates: refused."""
    ORDER_STUDY = "order_study"
    """An order and a study match by accession number or Study Instance UID but name
    different patients: kept, flagged, never linked."""
    STUDY_PATIENT = "study_patient"
    """Instances of a study radbridge holds name another patient: refused."""
    STUDY_SITE = "study_site"
    """Instances of a study radbridge holds come from another site than the study's: refused
    (a study stays its site's; nothing moves between sites)."""
    ORDER_SITE = "order_site"
    """A FHIR update (PUT) names an order held for another site than the one it is sent
    for: refused (an order stays its site's)."""
    INSTANCE_STUDY = "instance_study"
    """An instance comes with the SOP Instance UID of one radbridge holds in another study
    (or another series of its study): refused, the held one stays as it is."""
    SERIES_STUDY = "series_study"
    """An instance names a Series Instance UID radbridge holds in another study: refused."""
    RESULT_PATIENT = "result_patient"
    """A vendor's result names another patient than the study it is for: refused."""
    RESULT_STUDY = "result_study"
    """A vendor's result is of (or points at) another study than its job's: refused."""
    PATIENT_MERGE = "patient_merge"
    """An ADT^A40 that cannot be applied safely (unknown prior patient, across issuers,
    ambiguous issuer): refused."""
    PATIENT_UPDATE = "patient_update"
    """An ADT^A08 whose patient ID is held for several issuers and names none: refused."""


class ConflictAction(CodedValue):
    """What radbridge did with the data that conflicted."""

    REFUSED = "refused"
    """Answered with a protocol error; nothing of it was applied."""
    FLAGGED = "flagged"
    """Kept, but not used (an order not linked to the study)."""


class ConflictReason(CodedValue):
    """Why, in one word: what the edges map to their protocol's error codes."""

    OTHER_PATIENT = "other_patient"
    """The record is held for another patient."""
    OTHER_SITE = "other_site"
    """The study is held for another site."""
    OTHER_STUDY = "other_study"
    """The result is of (or points at) another study than its job's; the instance or series
    is held in another study (or series) than the one it names."""
    UNKNOWN_PATIENT = "unknown_patient"
    """The patient a merge names is not known to radbridge."""
    AMBIGUOUS_ISSUER = "ambiguous_issuer"
    """The patient ID is held for several issuers and the message names none."""
    ACROSS_ISSUERS = "across_issuers"
    """The merge's two patients are of different issuers (sites)."""
    SAME_PATIENT = "same_patient"
    """The merge names one patient twice."""


class ConflictState(CodedValue):
    """Whether an operator (or a later ADT merge) has dealt with the conflict."""

    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConflictReport:
    """A conflict as it is found, before it is stored.

    ``subject`` says what conflicted in words people search for (``placer number
    PL-1``, ``SOP Instance UID 1.2.3``); ``matched_on`` which identifier tied the two
    records (``placer_number``, ``filler_number``, ``accession_number``,
    ``resource_id``, ``study_uid``, ``series_uid``, ``sop_instance_uid``,
    ``patient_id``); ``held`` is the patient radbridge holds, ``claimed`` the one the
    message or file names; ``detail`` says what was wrong and what would be valid,
    without patient data (it goes back to the sender and into logs); ``reason`` one word
    for the edges to choose their answer (:class:`ConflictReason`).
    """

    kind: ConflictKind
    action: ConflictAction
    detail: str
    subject: str
    reason: ConflictReason
    matched_on: str = ""
    held: Patient = field(default_factory=Patient)
    claimed: Patient = field(default_factory=Patient)
    study_uid: str | None = None
    order_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityConflict:
    """A stored conflict: the report, where it came from, how often, and its resolution.

    ``count`` is how many times the same conflict came (each instance of a refused
    study, each resend of a refused message); ``message_id`` the HL7/FHIR message
    kept verbatim, when there is one.
    """

    id: int
    report: ConflictReport
    state: ConflictState
    source: str
    sender: str
    peer: str
    message_id: int | None
    count: int
    first_at: datetime
    last_at: datetime
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None


class IdentityConflictError(RadbridgeError):
    """What was sent would attach data to another patient; nothing of it was applied.

    The store raises it after recording the conflict (and the message as it came);
    each edge turns it into its protocol answer (HL7 AE with ERR, FHIR 409 with an
    OperationOutcome, a DICOM failure status, STOW-RS FailureReason).
    """

    def __init__(self, report: ConflictReport) -> None:
        self.report = report
        super().__init__(report.detail)
