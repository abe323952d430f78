"""The normalized domain model: small immutable types the whole system shares.

Adapters translate wire formats (DICOM, HL7, FHIR) into these types; routing
and the broker only ever see them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


class CodedValue(enum.StrEnum):
    """A coded value that also accepts its string in any case (``-`` or space for ``_``).

    ``aliases()`` maps other spellings, e.g. HL7's one-letter codes, to values.
    """

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {}

    @classmethod
    def _missing_(cls, value: object) -> CodedValue | None:
        if not isinstance(value, str):
            return None
        key = value.strip().casefold().replace("-", "_").replace(" ", "_")
        key = cls.aliases().get(key, key)
        return next((m for m in cls if m.value.casefold() == key), None)


class Priority(CodedValue):
    """How urgently a route wants its studies delivered: ``stat`` overtakes ``routine``."""

    STAT = "stat"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """0 for stat (most urgent), 2 for routine."""
        return (Priority.STAT, Priority.URGENT, Priority.ROUTINE).index(self)

    @property
    def bus_priority(self) -> int:
        """The message priority on the bus (0 to 9; higher goes first)."""
        return {Priority.STAT: 9, Priority.URGENT: 5, Priority.ROUTINE: 0}[self]


class StudyState(CodedValue):
    """Where a study is in its collection: still arriving, complete, or re-opened."""

    RECEIVING = "receiving"
    STABLE = "stable"
    UPDATED = "updated"


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str | None = None
    issuer: str | None = None
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the listener learned about one received instance, ready to index.

    ``path`` is where the spool holds the bytes as they came; the text fields
    are decoded with the instance's Specific Character Set.
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    patient: Patient = field(default_factory=Patient)
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    institution: str | None = None
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    protocol_name: str | None = None
    slice_thickness: float | None = None
    image_type: tuple[str, ...] = ()
    contrast_agent: str | None = None
    instance_number: int | None = None
    number_of_frames: int | None = None
    calling_ae: str = ""
    called_ae: str = ""
    peer_address: str = ""
    received_at: datetime | None = None
    series_tags: Mapping[str, str] | None = None
    """The routing tags of the series, read from this instance (its first), or None."""
    site: str | None = None
    """The site its sender belongs to (:mod:`broker.model.sites`); None: the implicit one."""


@dataclass(frozen=True, slots=True)
class Series:
    series_uid: str
    modality: str | None
    body_part: str | None
    description: str | None
    series_number: int | None
    slice_thickness: float | None
    image_type: tuple[str, ...]
    contrast_agent: str | None
    instance_count: int
    size: int


@dataclass(frozen=True, slots=True)
class Study:
    """A study as the store knows it: identity, patient, tags, series and lifecycle."""

    study_uid: str
    patient: Patient
    accession_number: str | None
    study_date: str | None
    description: str | None
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    state: StudyState
    revision: int
    instance_count: int
    size: int
    calling_ae: str
    called_ae: str
    peer_address: str
    first_received_at: datetime
    last_received_at: datetime
    stable_at: datetime | None
    stable_seconds: float
    series: tuple[Series, ...] = ()
    purged_at: datetime | None = None
    """When retention removed the study's instances from the spool (the study, its jobs and
    history stay; ``series`` then lists none)."""
    site: str | None = None
    """The site that sent it, attributed at intake; None: the one implicit site."""


class OrderPriority(CodedValue):
    """How urgent the ordering clinician says the examination is.

    Accepts its value in any case and the HL7 v2 codes ``S``, ``A`` and ``R``
    (TQ1-9 / ORC-7.6): ``OrderPriority("stat") is OrderPriority("S") is STAT``.
    """

    STAT = "STAT"
    ASAP = "ASAP"
    ROUTINE = "ROUTINE"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {"s": "stat", "a": "asap", "r": "routine"}


class OrderStatus(CodedValue):
    """Where an order is in its life (HL7 v2 ORC-5, FHIR ServiceRequest.status).

    Accepts its value in any case.
    """

    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    ON_HOLD = "on_hold"
    CANCELLED = "cancelled"
    DISCONTINUED = "discontinued"


class OrderSource(CodedValue):
    """The interface an order arrived on."""

    HL7 = "hl7"
    FHIR = "fhir"


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    """An imaging order from the RIS/HIS, normalized from HL7 v2 or FHIR.

    Where the orders interface will take each field from (HL7 v2 ORM^O01 /
    OMI^O23; FHIR ServiceRequest):

    - ``placer_number``: ORC-2 Placer Order Number (ServiceRequest.identifier, type PLAC)
    - ``filler_number``: ORC-3 Filler Order Number (identifier, type FILL)
    - ``accession_number``: OBR-18 (IPC-1 in OMI) (identifier, type ACSN);
      ``issuer`` is its assigning authority
    - ``procedure_code`` / ``procedure_text``: OBR-44 Procedure Code, else
      OBR-4 Universal Service Identifier (components 1 and 2) (ServiceRequest.code)
    - ``modality``: OBR-24 Diagnostic Serv Sect ID (IPC-5 in OMI)
    - ``priority``: ORC-7.6 (v2.3 to 2.4) or TQ1-9 (v2.5+) (ServiceRequest.priority)
    - ``department``: the ordering department (site-specific, e.g. ORC-17
      Entering Organization or PV1-3) (ServiceRequest.requester / locationCode)
    - ``status``: ORC-5 Order Status, and ORC-1 CA for cancellations (ServiceRequest.status)
    - ``requested_procedure_id``: IPC-2 in OMI (DICOM Requested Procedure ID)
    - ``study_uid``: IPC-3 in OMI, or a Z-segment, when the RIS assigns it
    - ``site``: the site of MSH-4 (HL7), of the API token (FHIR)
    """

    source: OrderSource
    placer_number: str | None = None
    filler_number: str | None = None
    accession_number: str | None = None
    issuer: str | None = None
    patient: Patient = field(default_factory=Patient)
    procedure_code: str | None = None
    procedure_text: str | None = None
    modality: str | None = None
    priority: OrderPriority = OrderPriority.ROUTINE
    department: str | None = None
    status: OrderStatus = OrderStatus.SCHEDULED
    study_uid: str | None = None
    requested_procedure_id: str | None = None
    site: str | None = None
    """The site whose RIS sent it (MSH-4, :mod:`broker.model.sites`); None: the implicit one.
    An order matches only its own site's orders and studies."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message as it arrived from the RIS/HIS, kept verbatim before it is acknowledged.

    ``kind`` names it for people (``ORM^O01``, ``ADT^A40``, ``ServiceRequest``,
    ``Bundle``); ``control_id`` is HL7's MSH-10 (or a FHIR request id);
    ``peer`` is the sender's address; ``sender`` who sent it, as the audit trail
    names it (``hl7:RIS^HOSP`` from MSH-3 and MSH-4, ``token:3 (ris)``).
    """

    source: OrderSource
    kind: str
    raw: bytes
    peer: str = ""
    control_id: str | None = None
    sender: str = ""


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """An order as the store holds it: its ids and versions around the normalized order.

    ``resource_id`` is the order's logical id on the FHIR interface (also for
    orders that came by HL7); ``version`` counts its updates, from 1.
    """

    id: int
    resource_id: str
    version: int
    order: Order
    created_at: datetime
    updated_at: datetime


class LinkState(CodedValue):
    """How a study relates to the order found for it."""

    LINKED = "linked"
    PATIENT_MISMATCH = "patient_mismatch"
    """Accession or study UID match, but the patient IDs differ: flagged, not linked."""


@dataclass(frozen=True, slots=True)
class OrderLink:
    """A study's order, or the order that would match but is flagged for an operator."""

    study_uid: str
    order_id: int
    state: LinkState
    matched_on: str
    """``accession_number`` or ``study_uid``."""
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    """What recording an order did: created or updated, the studies it now belongs to."""

    stored: StoredOrder
    created: bool
    linked: tuple[str, ...] = ()
    flagged: tuple[str, ...] = ()
    cancelled_jobs: int = 0


class Role(CodedValue):
    """What an HTTP API token or console user may do: viewers read, readers (radiologists)
    also see patient data and give verdicts on AI findings, operators also act on jobs,
    admins manage."""

    VIEWER = "viewer"
    READER = "reader"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """Whether this role covers ``needed`` (admin covers operator covers reader covers
        viewer)."""
        order = (Role.VIEWER, Role.READER, Role.OPERATOR, Role.ADMIN)
        return order.index(self) >= order.index(needed)

    @property
    def sees_phi(self) -> bool:
        """Whether this role sees patient names, IDs and birth dates (console and API alike):
        readers, operators and admins do, viewers do not."""
        return self.allows(PHI_ROLE)


#: The least role that sees patient data (:attr:`Role.sees_phi`), in the console and the API:
#: a radiologist judging an AI finding needs to know whose study it is.
PHI_ROLE = Role.READER
#: The least role that gives verdicts on AI findings.
VERDICT_ROLE = Role.READER
#: The least role that reads the audit trail, in the console and the API.
AUDIT_ROLE = Role.ADMIN


# ------------------------------------------------------------------------ Results

#: Well-known code systems: DICOM Coding Scheme Designator -> FHIR ``system`` URI.
CODE_SYSTEM_URIS: dict[str, str] = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "RADLEX": "http://radlex.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
}


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept, e.g. ``Code("SCT", "1386000", "Intracranial hemorrhage")``.

    ``system`` is always a DICOM Coding Scheme Designator (``SCT``, ``DCM``,
    ``LN``, ``RADLEX``, ``UCUM``, or a private ``99…`` designator); the JSON
    schema also accepts the FHIR URIs of :data:`CODE_SYSTEM_URIS` and stores
    their designator. :attr:`system_uri` gives the FHIR URI back where one is known.
    """

    system: str
    value: str
    meaning: str

    @property
    def system_uri(self) -> str | None:
        """The FHIR ``system`` URI for :attr:`system`, or None for a private scheme."""
        return CODE_SYSTEM_URIS.get(self.system)


@dataclass(frozen=True, slots=True)
class Measurement:
    """A numeric measurement of a finding; ``unit`` is a UCUM code (``mm``, ``mm3``, ``%``)."""

    name: Code
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class ImageReference:
    """An image (or, without ``sop_instance_uid``, a whole series) a finding was seen on."""

    series_uid: str
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One finding an AI product reports: what, whether present, how sure, how urgent.

    ``score`` is the product's probability that the finding is present (0 to
    1); other numeric scores are :class:`Measurement` s. ``site`` is the
    anatomic location, when the product codes it.
    """

    code: Code
    present: bool
    text: str | None = None
    score: float | None = None
    urgent: bool = False
    measurements: tuple[Measurement, ...] = ()
    references: tuple[ImageReference, ...] = ()
    site: Code | None = None


@dataclass(frozen=True, slots=True)
class AlgorithmInfo:
    """The AI product that produced a result, as its vendor names it; ``regulatory`` is the
    hospital's record of it (certificate, class, intended use), added by radbridge."""

    vendor: str
    product: str
    version: str
    regulatory: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Findings:
    """What an AI product found in one study (JSON findings, normalized).

    ``complete`` is false for a preliminary result that a later one replaces;
    ``expected_objects`` is how many DICOM objects the vendor sends besides
    (None: not said).
    """

    study_uid: str
    algorithm: AlgorithmInfo
    findings: tuple[Finding, ...] = ()
    complete: bool = True
    expected_objects: int | None = None
    summary: str | None = None

    @property
    def urgent(self) -> bool:
        """Whether any finding is flagged urgent."""
        return any(f.urgent for f in self.findings)


class ResultOrigin(CodedValue):
    """How a result object reached radbridge, or that radbridge made it."""

    DICOM = "dicom"
    """C-STORE to an AE title with the ``results`` role."""
    STOW = "stow"
    """STOW-RS to radbridge's results endpoint."""
    HTTP = "http"
    """Attached to an HTTP findings callback."""
    GENERATED = "generated"
    """Made by radbridge (the SR of JSON findings)."""


@dataclass(frozen=True, slots=True)
class ResultObject:
    """One DICOM object of a result, stored verbatim in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    path: str
    size: int
    origin: ResultOrigin


class ResultState(CodedValue):
    """A result collects objects until the vendor says it is complete, the declared
    number of objects is in, or the vendor's quiet period passes."""

    COLLECTING = "collecting"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What a vendor returned for one job: DICOM objects and/or JSON findings.

    ``job_id`` is None for an orphan (it matched no job); orphans are kept and
    listed, never dropped. ``urgent`` is the vendor's flag (or any urgent finding).
    """

    id: int
    job_id: int | None
    study_uid: str
    vendor: str | None
    state: ResultState
    urgent: bool
    findings: Findings | None
    objects: tuple[ResultObject, ...]
    expected_objects: int | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
