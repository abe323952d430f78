"""The normalized domain model: small immutable types the whole system shares.

Adapters translate wire formats (DICOM, HL7, FHIR) into these types; routing
and the broker only ever see them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class StudyState(enum.StrEnum):
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
