"""IOCM Rejection Notes received by C-STORE: read into the domain's :class:`RejectionNote`.

A Rejection Note (IHE IOCM) is a Key Object Selection Document whose title
(Concept Name Code Sequence) is a rejection reason of CID 7011, e.g. DCM 113001
"Rejected for Quality Reasons" or 113037 "Rejected for Patient Safety Reasons";
its Current Requested Procedure Evidence Sequence lists the rejected instances by
study and series. Any other Key Object Selection is an ordinary instance.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from adapters.dicom_header import read_header
from broker.model.correction import RejectionNote, rejection_title
from broker.model.errors import InvalidDicomError

#: Key Object Selection Document Storage.
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    return list(ds.get(keyword) or [])


def rejection_note_from_dataset(ds: Dataset) -> RejectionNote | None:
    """The note ``ds`` is, or None when it is no Rejection Note (another KOS, no title).

    A note that names no study or no instance raises InvalidDicomError."""
    titles = _items(ds, "ConceptNameCodeSequence")
    if not titles:
        return None
    title = titles[0]
    reason = rejection_title(title.get("CodingSchemeDesignator"), title.get("CodeValue"))
    if reason is None:
        return None
    series: dict[str, list[str]] = {}
    study_uid = str(ds.get("StudyInstanceUID") or "")
    for study in _items(ds, "CurrentRequestedProcedureEvidenceSequence"):
        if str(study.get("StudyInstanceUID") or study_uid) != study_uid:
            continue  # another study's instances: not this study's note (IOCM: one study)
        for item in _items(study, "ReferencedSeriesSequence"):
            uid = str(item.get("SeriesInstanceUID") or "")
            sops = [
                str(ref.ReferencedSOPInstanceUID)
                for ref in _items(item, "ReferencedSOPSequence")
                if ref.get("ReferencedSOPInstanceUID")
            ]
            if uid and sops:
                series.setdefault(uid, []).extend(sops)
    if not study_uid or not series:
        raise InvalidDicomError(
            "a rejection note must name its study and the rejected instances "
            "(Current Requested Procedure Evidence Sequence > Referenced Series Sequence > "
            "Referenced SOP Sequence)"
        )
    return RejectionNote(
        study_uid=study_uid,
        sop_instance_uid=str(ds.get("SOPInstanceUID") or ""),
        reason=reason,
        series={k: tuple(v) for k, v in series.items()},
    )


def rejection_note_from_file(path: Path) -> RejectionNote | None:
    """The Rejection Note in the received file ``path``, or None (see above)."""
    return rejection_note_from_dataset(read_header(path))
