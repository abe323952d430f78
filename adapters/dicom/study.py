"""DICOM records ↔ a domain :class:`~broker.model.domain.Study` and its indexed tags.

Pure functions: ``study_from_records`` assembles what the index learned about
each instance (:class:`~broker.model.domain.InstanceRecord`) into a study with its
series, and the mapping of DICOM tag values routing reads (``tag.*``
conditions), keyed by DICOM keyword, multiple values separated by a
backslash as DICOM does. ``tags_from_study`` gives the same mapping for a
study read back from the store (which keeps fewer tags).

Patient names never go into the tag mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from adapters.dicom.mapping import instance_record_from_spooled_file
from broker.model.domain import InstanceRecord, Series, Study, StudyState
from broker.model.errors import DicomError
from routing.facts import joined as _joined
from routing.facts import study_tags

_EPOCH = datetime.fromtimestamp(0, UTC)


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v), None)


def _series_of(records: Sequence[InstanceRecord]) -> Series:
    r0 = records[0]
    thickness = next((r.slice_thickness for r in records if r.slice_thickness is not None), None)
    unique = {r.sop_instance_uid: r for r in records}
    return Series(
        series_uid=r0.series_uid,
        modality=_first(r.modality for r in records),
        body_part=_first(r.body_part for r in records),
        description=_first(r.series_description for r in records),
        series_number=next((r.series_number for r in records if r.series_number is not None), None),
        slice_thickness=thickness,
        image_type=next((r.image_type for r in records if r.image_type), ()),
        contrast_agent=_first(r.contrast_agent for r in records),
        instance_count=len(unique),
        size=sum(r.size for r in unique.values()),
    )


def study_from_records(records: Sequence[InstanceRecord]) -> tuple[Study, dict[str, str]]:
    """One study, and its tags by keyword, from the records of its instances.

    The records must all belong to one study. Series come in series-number
    order; an instance recorded twice counts once. The study is taken as
    stable at its last receipt (files on disk are complete).
    """
    if not records:
        raise DicomError("no DICOM instances to make a study from")
    uids = {r.study_uid for r in records}
    if len(uids) > 1:
        raise DicomError(
            f"the records belong to {len(uids)} studies ({', '.join(sorted(uids))}); "
            "valid: the records of one study (see group_by_study)"
        )
    by_series: dict[str, list[InstanceRecord]] = {}
    for record in records:
        by_series.setdefault(record.series_uid, []).append(record)
    series = sorted(
        (_series_of(group) for group in by_series.values()),
        key=lambda s: (s.series_number is None, s.series_number or 0),
    )
    received = [r.received_at or _EPOCH for r in records]
    r0 = records[0]
    patient = next((r.patient for r in records if r.patient.patient_id), r0.patient)
    study = Study(
        study_uid=r0.study_uid,
        patient=patient,
        accession_number=_first(r.accession_number for r in records),
        study_date=_first(r.study_date for r in records),
        description=_first(r.study_description for r in records),
        modalities=tuple(dict.fromkeys(s.modality for s in series if s.modality)),
        body_parts=tuple(dict.fromkeys(s.body_part for s in series if s.body_part)),
        state=StudyState.STABLE,
        revision=1,
        instance_count=sum(s.instance_count for s in series),
        size=sum(s.size for s in series),
        calling_ae=_first(r.calling_ae for r in records) or "",
        called_ae=_first(r.called_ae for r in records) or "",
        peer_address=_first(r.peer_address for r in records) or "",
        first_received_at=min(received),
        last_received_at=max(received),
        stable_at=max(received),
        stable_seconds=0.0,
        series=tuple(series),
    )
    tags = study_tags(study)
    extra = {
        "StudyTime": _first(r.study_time for r in records),
        "ReferringPhysicianName": _first(r.referring_physician for r in records),
        "InstitutionName": _first(r.institution for r in records),
        "ProtocolName": _joined(r.protocol_name for r in records),
        "SOPClassUID": _joined(r.sop_class_uid for r in records),
    }
    tags.update({k: v for k, v in extra.items() if v})
    return study, tags


def group_by_study(records: Iterable[InstanceRecord]) -> dict[str, list[InstanceRecord]]:
    """Records by Study Instance UID, in the order studies first appear."""
    out: dict[str, list[InstanceRecord]] = {}
    for record in records:
        out.setdefault(record.study_uid, []).append(record)
    return out


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_studies(path: Path) -> tuple[list[tuple[Study, dict[str, str]]], int]:
    """The studies in a DICOM file or folder, and how many files were not DICOM."""
    records: list[InstanceRecord] = []
    skipped = 0
    for file in _files(path):
        try:
            records.append(instance_record_from_spooled_file(file))
        except DicomError:
            skipped += 1
    return [study_from_records(group) for group in group_by_study(records).values()], skipped
