"""DICOM result objects -> what matching needs: UIDs, the studies they reference, urgency.

Vendors return SR (Basic/Enhanced/Comprehensive), SEG, secondary capture,
KOS, GSPS, encapsulated PDF… Only the header is read, with large values
deferred; the content tree is walked only for SR documents (small).

A result is urgent when an SR's content tree holds the qualitative
evaluation ``Priority (SCT 260870009) = Urgent (SCT 103391001)``, the item
radbridge's own SR writes for an urgent finding (TID 1500 measurement group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from adapters.dicom_header import read_header
from adapters.dicom_uid import MAX_UID_LENGTH, checked_uid
from broker.model.domain import Patient
from broker.model.errors import InvalidDicomError

#: (scheme, value) of the concept name and value that mark an urgent SR.
PRIORITY = ("SCT", "260870009")
URGENT = ("SCT", "103391001")
#: How deep an SR content tree is searched for the urgency flag.
MAX_DEPTH = 8
#: Storage SOP classes of structured reports (PS3.4 B.5): their content tree is read.
SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    }
)
_EVIDENCE = (
    "CurrentRequestedProcedureEvidenceSequence",
    "PertinentOtherEvidenceSequence",
    "StudiesContainingOtherReferencedInstancesSequence",
    "ReferencedStudySequence",
)


@dataclass(frozen=True, slots=True)
class ResultHeader:
    """What radbridge reads from a result object."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    referenced_studies: tuple[str, ...]
    referenced_series: tuple[str, ...]
    urgent: bool
    transfer_syntax_uid: str | None = None
    """From the file meta information (None: the file has none)."""
    patient: Patient = field(default_factory=Patient)
    """Patient ID and Issuer of Patient ID: the result must name its study's patient."""

    @property
    def is_sr(self) -> bool:
        return self.sop_class_uid in SR_CLASSES


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().strip("\x00") if value is not None else ""
    return text or None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a value pydicom cannot decode counts as absent
        return None
    text = str(value).strip().strip("\x00") if value is not None else ""
    return text or None


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    try:
        value = ds.get(keyword)
    except Exception:  # a sequence pydicom cannot read counts as absent
        return []
    return list(value) if value is not None else []


def _code(ds: Dataset, keyword: str) -> tuple[str, str] | None:
    items = _items(ds, keyword)
    if not items:
        return None
    item = items[0]
    return (str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", "")))


def _urgent(items: list[Dataset], depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    for item in items:
        if (
            _code(item, "ConceptNameCodeSequence") == PRIORITY
            and _code(item, "ConceptCodeSequence") == URGENT
        ):
            return True
        if _urgent(_items(item, "ContentSequence"), depth + 1):
            return True
    return False


def _references(ds: Dataset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    studies: list[str] = []
    series: list[str] = []
    for keyword in _EVIDENCE:
        for item in _items(ds, keyword):
            if (uid := _uid(item, "StudyInstanceUID")) is not None:
                studies.append(uid)
            series += [
                s
                for sub in _items(item, "ReferencedSeriesSequence")
                if (s := _uid(sub, "SeriesInstanceUID"))
            ]
    series += [
        s
        for item in _items(ds, "ReferencedSeriesSequence")
        if (s := _uid(item, "SeriesInstanceUID"))
    ]
    return tuple(dict.fromkeys(studies)), tuple(dict.fromkeys(series))


def read_result_header(path: Path, sop_class_uid: str | None = None) -> ResultHeader:
    """Read a stored result object's header; :class:`InvalidDicomError` if it is not DICOM
    or lacks the UIDs a result needs."""
    try:  # deflate bombs and deep nesting are refused here too
        ds: Any = read_header(path, defer_size="256 KB")
    except InvalidDicomError as exc:
        raise InvalidDicomError(f"not a readable DICOM object: {exc}") from exc
    sop_class = _uid(ds, "SOPClassUID") or sop_class_uid
    values = {
        "SOPClassUID": sop_class,
        "SOPInstanceUID": _uid(ds, "SOPInstanceUID"),
        "StudyInstanceUID": _uid(ds, "StudyInstanceUID"),
        "SeriesInstanceUID": _uid(ds, "SeriesInstanceUID"),
    }
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise InvalidDicomError(f"result object without {', '.join(missing)}")
    for keyword, value in values.items():
        if keyword == "SOPClassUID":
            if len(str(value)) > MAX_UID_LENGTH:
                raise InvalidDicomError(f"{keyword} longer than {MAX_UID_LENGTH} characters")
        else:
            checked_uid(keyword, str(value))
    studies, series = _references(ds)
    sop_class = str(sop_class)
    return ResultHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=str(values["SOPInstanceUID"]),
        study_uid=str(values["StudyInstanceUID"]),
        series_uid=str(values["SeriesInstanceUID"]),
        referenced_studies=studies,
        referenced_series=series,
        urgent=sop_class in SR_CLASSES and _urgent(_items(ds, "ContentSequence")),
        transfer_syntax_uid=_uid(ds.file_meta, "TransferSyntaxUID") if ds.file_meta else None,
        patient=Patient(patient_id=_text(ds, "PatientID"), issuer=_text(ds, "IssuerOfPatientID")),
    )
