"""DICOM records ↔ a domain :class:`~broker.model.domain.Study` and its routing tags.

Pure functions: ``study_from_records`` assembles what the index learned about
each instance (:class:`~broker.model.domain.InstanceRecord`) into a study with its
series, the way the index does (a later instance's value fills in or replaces
an earlier one's; a series keeps the routing tags of its first instance), and
the tag mapping routing reads (``tag.*`` conditions) through
:func:`routing.facts.study_tags` — the function the running service uses on
the stored study, so explaining files and serving decide alike.

Patient names never go into the tag mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from adapters.dicom.mapping import instance_record_from_spooled_file
from broker.model.domain import InstanceRecord, Patient, Series, Study, StudyState
from broker.model.errors import DicomError
from routing.facts import study_tags

_EPOCH = datetime.fromtimestamp(0, UTC)
_N = TypeVar("_N", int, float)


def _last(values: Iterable[str | None]) -> str | None:
    """The last non-empty value: the index keeps what the latest instance brought."""
    found = None
    for value in values:
        if value:
            found = value
    return found


def _last_number(values: Iterable[_N | None]) -> _N | None:
    found = None
    for value in values:
        if value is not None:
            found = value
    return found


def _series_of(records: Sequence[InstanceRecord]) -> Series:
    unique = {r.sop_instance_uid: r for r in records}
    image_type = _last("\\".join(r.image_type) for r in records)
    return Series(
        series_uid=records[0].series_uid,
        modality=_last(r.modality for r in records),
        body_part=_last(r.body_part for r in records),
        description=_last(r.series_description for r in records),
        series_number=_last_number(r.series_number for r in records),
        slice_thickness=_last_number(r.slice_thickness for r in records),
        image_type=tuple(image_type.split("\\")) if image_type else (),
        contrast_agent=_last(r.contrast_agent for r in records),
        instance_count=len(unique),
        size=sum(r.size for r in unique.values()),
    )


def _patient(records: Sequence[InstanceRecord]) -> Patient:
    """The patient: ID and issuer as the first instances name them (the index never lets a
    later instance change who a study belongs to), the rest as the latest brought."""
    return Patient(
        patient_id=next((r.patient.patient_id for r in records if r.patient.patient_id), None),
        issuer=next((r.patient.issuer for r in records if r.patient.issuer), None),
        name=_last(r.patient.name for r in records),
        birth_date=_last(r.patient.birth_date for r in records),
        sex=_last(r.patient.sex for r in records),
    )


def series_tags_of(records: Iterable[InstanceRecord]) -> dict[str, Mapping[str, str]]:
    """The routing tags of each series: those of its first record that carries them."""
    out: dict[str, Mapping[str, str]] = {}
    for record in records:
        if record.series_tags is not None and record.series_uid not in out:
            out[record.series_uid] = record.series_tags
    return out


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
    r0, last = records[0], records[-1]
    study = Study(
        study_uid=r0.study_uid,
        patient=_patient(records),
        accession_number=_last(r.accession_number for r in records),
        study_date=_last(r.study_date for r in records),
        description=_last(r.study_description for r in records),
        modalities=tuple(dict.fromkeys(s.modality for s in series if s.modality)),
        body_parts=tuple(dict.fromkeys(s.body_part for s in series if s.body_part)),
        state=StudyState.STABLE,
        revision=1,
        instance_count=sum(s.instance_count for s in series),
        size=sum(s.size for s in series),
        calling_ae=last.calling_ae,
        called_ae=last.called_ae,
        peer_address=last.peer_address,
        first_received_at=min(received),
        last_received_at=max(received),
        stable_at=max(received),
        stable_seconds=0.0,
        series=tuple(series),
    )
    return study, study_tags(study, series_tags_of(records))


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
    """The studies in a DICOM file or folder (files in name order, as if received in that
    order), with their routing tags, and how many files were not DICOM."""
    records: list[InstanceRecord] = []
    skipped = 0
    tagged: set[str] = set()

    def first_of_series(series_uid: str) -> bool:
        new = series_uid not in tagged
        tagged.add(series_uid)
        return new

    for file in _files(path):
        try:
            records.append(instance_record_from_spooled_file(file, first_of_series))
        except DicomError:
            skipped += 1
    return [study_from_records(group) for group in group_by_study(records).values()], skipped
