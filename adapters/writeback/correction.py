"""What a DICOM target (C-STORE, STOW-RS) stores to correct what it wrote: IOCM objects.

:func:`correction_to_store` gives the files of one correction delivery
(:mod:`broker.model.correction`), written for the attempt into a private
temporary folder that is removed after it:

- the objects the ``result`` delivery stored are found again as it found them
  (:func:`adapters.writeback.rendering.objects_to_store`: the result's own
  objects, and its renderings, made again with the same UIDs);
- for a patient change, a corrected copy of each under the patient (and
  accession) radbridge holds now, with new SOP Instance and Series Instance UIDs;
- an IOCM Rejection Note (a Key Object Selection made with highdicom, title the
  correction's reason, e.g. DCM 113001 "Rejected for Quality Reasons" or 113038
  "Incorrect Modality Worklist Entry") that references every object stored before,
  under the patient they were stored with, so that the PACS hides or deletes them.

Every new UID derives from the correction delivery's ``message_id`` (and the old
UID), so a retry stores the same instances again. Corrected copies go first: the
PACS holds the corrected result before the old one is rejected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.sr.coding import Code as SrCode
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from adapters.results.render.settings import DicomRenderSettings
from adapters.writeback.base import TargetRejectedError
from adapters.writeback.rendering import objects_to_store
from broker.model.domain import Patient
from broker.model.writeback import WritebackItem

#: Series Number of radbridge's Rejection Notes in the study.
REJECTION_SERIES_NUMBER = 9990
#: The header attributes a corrected copy takes from the patient radbridge holds now.
PATIENT_ATTRIBUTES = (
    ("patient_id", "PatientID"),
    ("issuer", "IssuerOfPatientID"),
    ("name", "PatientName"),
    ("birth_date", "PatientBirthDate"),
    ("sex", "PatientSex"),
)


@dataclass(frozen=True, slots=True)
class CorrectionFiles:
    """The files of one correction delivery and what to say about them."""

    paths: list[Path]
    corrected: int
    rejected: int

    def detail(self) -> str:
        said = f"rejection note for {self.rejected} object(s)"
        if self.corrected:
            said = f"{self.corrected} corrected object(s) and {said}"
        return said


def _uid(message_id: str, *parts: str) -> str:
    return str(generate_uid(entropy_srcs=["radbridge-correction", message_id, *parts]))


def _patient_now(item: WritebackItem) -> Patient:
    """The patient radbridge holds now: the linked order's, else the study's."""
    if item.order is not None and item.order.order.patient.patient_id:
        return item.order.order.patient
    if item.study is not None:
        return item.study.patient
    raise TargetRejectedError(
        f"delivery {item.delivery.id}: the study is no longer held; its corrected patient is "
        "unknown"
    )


def corrected_copy(ds: Dataset, patient: Patient, accession: str | None, message_id: str) -> None:
    """Re-issue ``ds`` (in place) under ``patient`` with new instance and series UIDs."""
    old_sop, old_series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
    for attr, keyword in PATIENT_ATTRIBUTES:
        value = getattr(patient, attr)
        if value is not None:
            setattr(ds, keyword, value)
    if accession:
        ds.AccessionNumber = accession
    ds.SOPInstanceUID = _uid(message_id, "instance", old_sop)
    ds.SeriesInstanceUID = _uid(message_id, "series", old_series)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def rejection_note(
    rejected: Sequence[Dataset], reason: SrCode, *, message_id: str, created: datetime
) -> Dataset:
    """An IOCM Rejection Note for ``rejected`` (headers of one study), titled ``reason``."""
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=rejected,
        content=hd.ko.KeyObjectSelection(document_title=reason, referenced_objects=rejected),
        series_instance_uid=_uid(message_id, "rejection-series"),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=_uid(message_id, "rejection"),
        instance_number=1,
        manufacturer="radbridge",
    )
    note.ContentDate = DA(created.date())
    note.ContentTime = TM(created.time())
    note.SeriesDescription = f"Rejection note: {reason.meaning}"[:64]
    return note


@contextmanager
def correction_to_store(
    item: WritebackItem, settings: DicomRenderSettings
) -> Iterator[CorrectionFiles]:
    """The files to store for the correction delivery ``item``, valid inside the block."""
    why = item.correction
    if why is None:
        raise TargetRejectedError(f"delivery {item.delivery.id} has no correction")
    message_id = item.delivery.message_id
    created = why.created_at.astimezone(UTC)
    reason = SrCode(why.reason.value, why.reason.system, why.reason.meaning)
    with (
        objects_to_store(item, settings) as stored,
        TemporaryDirectory(prefix="radbridge-correction-") as folder,
    ):
        headers = [dcmread(p, stop_before_pixels=True) for p in stored.paths]
        paths: list[Path] = []
        if not why.cause.withdraws:
            patient = _patient_now(item)
            accession = item.order.order.accession_number if item.order is not None else None
            if accession is None and item.study is not None:
                accession = item.study.accession_number
            for source in stored.paths:
                ds = dcmread(source)
                corrected_copy(ds, patient, accession, message_id)
                path = Path(folder) / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
        try:
            note = rejection_note(headers, reason, message_id=message_id, created=created)
        except (ValueError, TypeError, AttributeError) as exc:
            raise TargetRejectedError(f"cannot make the rejection note: {exc}") from exc
        note_path = Path(folder) / f"{note.SOPInstanceUID}.dcm"
        note.save_as(note_path, enforce_file_format=True)
        paths.append(note_path)
        yield CorrectionFiles(paths, len(paths) - 1, len(headers))
