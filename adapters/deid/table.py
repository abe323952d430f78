"""The action for each attribute: PS3.15 Annex E Table E.1-1, Basic profile and options.

The Basic profile's column comes from ``dicom-anonymizer``
(``dicomanonymizer.dicom_anonymization_databases``, edition ``2026c``), which
keeps the table's ~650 attributes current with the standard. Its compound
actions resolve to the one that keeps an object valid whatever the attribute's
type in the IOD: ``Z/D`` and ``X/D`` and ``X/Z/D`` → ``D`` (a dummy value),
``X/Z`` → ``Z`` (zero length), ``X/Z/U*`` → ``K`` (kept, its UIDs replaced where
they occur). The options' columns (which that table does not carry) are
written here for the attributes each option changes; they override the Basic
action.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping

from pydicom.datadict import tag_for_keyword

from broker.model.deid import Deidentify, DeidOption

#: The edition of the table in ``dicom-anonymizer``.
EDITION = "dicomfields_2026c"


class Action(enum.StrEnum):
    """An action code of Table E.1-1, as applied here."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"
    CLEAN = "C"
    """Kept, identifying words removed (text) or de-identified item by item (sequences)."""
    SHIFT = "M"
    """A date moved back by the patient's day shift (retain longitudinal, modified dates)."""


_BASIC = {
    "D_TAGS": Action.DUMMY,
    "Z_TAGS": Action.EMPTY,
    "X_TAGS": Action.REMOVE,
    "U_TAGS": Action.UID,
    "Z_D_TAGS": Action.DUMMY,
    "X_Z_TAGS": Action.EMPTY,
    "X_D_TAGS": Action.DUMMY,
    "X_Z_D_TAGS": Action.DUMMY,
    "X_Z_U_STAR_TAGS": Action.KEEP,
}

#: Retain Patient Characteristics Option.
PATIENT_CHARACTERISTICS = {
    **dict.fromkeys(
        (
            "PatientAge",
            "PatientSex",
            "PatientSize",
            "PatientWeight",
            "PatientSexNeutered",
            "PatientSizeCodeSequence",
            "PatientBodyMassIndex",
            "MeasuredAPDimension",
            "MeasuredLateralDimension",
            "EthnicGroup",
            "EthnicGroupCodeSequence",
            "SmokingStatus",
            "PregnancyStatus",
        ),
        Action.KEEP,
    ),
    **dict.fromkeys(
        (
            "Allergies",
            "MedicalAlerts",
            "AdditionalPatientHistory",
            "PatientState",
            "SpecialNeeds",
            "Occupation",
        ),
        Action.CLEAN,
    ),
}
#: Retain Device Identity Option.
DEVICE_IDENTITY = dict.fromkeys(
    (
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "DeviceDescription",
        "DeviceLabel",
        "DetectorID",
        "GantryID",
        "GeneratorID",
        "CassetteID",
        "PlateID",
        "SourceSerialNumber",
        "TreatmentMachineName",
        "XRayDetectorID",
        "XRaySourceID",
        "ManufacturerDeviceIdentifier",
        "DeviceAlternateIdentifier",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "ScheduledStationAETitle",
        "ScheduledStationName",
        "ScheduledStudyLocation",
    ),
    Action.KEEP,
)
#: Clean Descriptors Option.
DESCRIPTORS = dict.fromkeys(
    (
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "ImageComments",
        "AcquisitionComments",
        "DerivationDescription",
        "RequestedProcedureDescription",
        "PerformedProcedureStepDescription",
        "ScheduledProcedureStepDescription",
        "ReasonForTheRequestedProcedure",
        "AdmittingDiagnosesDescription",
        "ContrastBolusAgent",
        "AcquisitionDeviceProcessingDescription",
        "StudyComments",
        "PatientComments",
        "AdditionalPatientHistory",
        "ClinicalTrialSeriesDescription",
        "LabelText",
    ),
    Action.CLEAN,
)
#: Clean Structured Content Option.
STRUCTURED_CONTENT = dict.fromkeys(("ContentSequence", "AcquisitionContextSequence"), Action.CLEAN)
#: Clean Graphics Option (text objects are removed from what is kept).
GRAPHICS = dict.fromkeys(("GraphicAnnotationSequence",), Action.CLEAN)

_OPTIONS: Mapping[DeidOption, Mapping[str, Action]] = {
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: PATIENT_CHARACTERISTICS,
    DeidOption.RETAIN_DEVICE_IDENTITY: DEVICE_IDENTITY,
    DeidOption.CLEAN_DESCRIPTORS: DESCRIPTORS,
    DeidOption.CLEAN_STRUCTURED_CONTENT: STRUCTURED_CONTENT,
    DeidOption.CLEAN_GRAPHICS: GRAPHICS,
}

#: Attributes whose Basic action is replaced by a pseudonym (a dummy value the vendor can
#: compare across studies): Patient ID, Patient's Name, Accession Number.
PSEUDONYMIZED = frozenset(
    tag_for_keyword(k) for k in ("PatientID", "PatientName", "AccessionNumber")
)


@functools.cache
def basic_actions() -> Mapping[int, Action]:
    """The Basic profile's action of each attribute (tag as an int) of Table E.1-1."""
    from dicomanonymizer.dicomfields_selector import (  # noqa: PLC0415 - loaded once, on use
        dicom_anonymization_database_selector,
    )

    table = dicom_anonymization_database_selector(EDITION)
    actions: dict[int, Action] = {}
    for category, action in _BASIC.items():
        for tag in table[category]:
            if len(tag) == 2:
                actions[tag[0] << 16 | tag[1]] = action
    return actions


#: Repeating groups of the table: (group mask, element) → action; curves and overlays.
REPEATING: tuple[tuple[int, int, int, Action], ...] = (
    (0x5000, 0xFF00, -1, Action.REMOVE),  # curve data (50xx,xxxx)
    (0x6000, 0xFF00, 0x3000, Action.REMOVE),  # overlay data (60xx,3000)
    (0x6000, 0xFF00, 0x4000, Action.REMOVE),  # overlay comments (60xx,4000)
)


def _tags(names: Mapping[str, Action]) -> dict[int, Action]:
    found = {}
    for keyword, action in names.items():
        tag = tag_for_keyword(keyword)
        if tag is not None:
            found[tag] = action
    return found


@functools.cache
def _actions(options: frozenset[DeidOption]) -> Mapping[int, Action]:
    actions = dict(basic_actions())
    for option in sorted(options):
        actions.update(_tags(_OPTIONS.get(option, {})))
    return actions


def actions_for(profile: Deidentify) -> Mapping[int, Action]:
    """Tag → action of ``profile`` (attributes not in the map are kept)."""
    return _actions(frozenset(profile.options))


def repeating_action(tag: int) -> Action | None:
    """The action of a curve or overlay attribute, or None."""
    group, element = tag >> 16, tag & 0xFFFF
    for base, mask, wanted, action in REPEATING:
        if group & mask == base and (wanted < 0 or element == wanted):
            return action
    return None
