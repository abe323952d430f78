"""Corrections as plain functions: which KOS is a Rejection Note, which results a note
touches, and the correcting FHIR Bundle and ORU."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from adapters.dicom.rejection import rejection_note_from_dataset
from adapters.hl7.oru import build_oru
from adapters.writeback.fhir import build_bundle, correction_bundle
from broker.model.correction import (
    INCORRECT_WORKLIST_ENTRY,
    REJECTED_FOR_QUALITY,
    CorrectionCause,
    default_reason,
    made_from,
)
from broker.model.domain import Result, ResultState
from broker.model.errors import InvalidDicomError
from tests.writeback_data import findings


def kos(code: str, scheme: str = "DCM", series: dict[str, list[str]] | None = None) -> Dataset:
    """A Key Object Selection header with title ``code`` rejecting ``series``."""
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SOPInstanceUID = "1.2.3.99"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = code, scheme, "title"
    ds.ConceptNameCodeSequence = Sequence([title])
    study = Dataset()
    study.StudyInstanceUID = "1.2.3"
    items = []
    for uid, sops in (series or {}).items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        refs = []
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ref.ReferencedSOPInstanceUID = sop
            refs.append(ref)
        item.ReferencedSOPSequence = Sequence(refs)
        items.append(item)
    study.ReferencedSeriesSequence = Sequence(items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    return ds


def test_rejection_note_is_told_by_its_title() -> None:
    """A KOS titled 113001 is a Rejection Note with its series and instances; a KOS titled
    "Of Interest" (113000) is an ordinary instance; a note that rejects nothing is refused."""
    note = rejection_note_from_dataset(
        kos("113001", series={"1.2.3.1": ["1.2.3.1.1", "1.2.3.1.2"]})
    )
    assert note is not None
    assert note.reason == REJECTED_FOR_QUALITY
    assert dict(note.series) == {"1.2.3.1": ("1.2.3.1.1", "1.2.3.1.2")} and note.instance_count == 2
    assert rejection_note_from_dataset(kos("113000", series={"1.2.3.1": ["1.2.3.1.1"]})) is None
    assert (
        rejection_note_from_dataset(kos("113001", scheme="99X", series={"1.2.3.1": ["1.2.3.1.1"]}))
        is None
    )
    with pytest.raises(InvalidDicomError, match="must name its study and the rejected"):
        rejection_note_from_dataset(kos("113037"))


def test_which_jobs_a_note_touches_and_the_default_reasons() -> None:
    """A job that sent a rejected series, or the whole study, is touched; one that sent other
    series is not; a patient change or a cancelled order rejects as a wrong worklist entry."""
    assert made_from(("s1", "s2"), ["s2"])
    assert made_from((), ["s9"])
    assert not made_from(("s1",), ["s2"])
    assert not made_from((), [])
    assert default_reason(CorrectionCause.PATIENT_CHANGED) == INCORRECT_WORKLIST_ENTRY
    assert default_reason(CorrectionCause.ORDER_CANCELLED) == INCORRECT_WORKLIST_ENTRY
    assert not CorrectionCause.PATIENT_CHANGED.withdraws and CorrectionCause.REJECTED.withdraws


def _result() -> Result:
    at = datetime(2024, 5, 1, 8, 15, tzinfo=UTC)
    return Result(
        id=7,
        job_id=3,
        study_uid="1.2.3",
        vendor="ichai",
        state=ResultState.COMPLETE,
        urgent=False,
        findings=findings("1.2.3"),
        objects=(),
        expected_objects=None,
        created_at=at,
        updated_at=at,
        completed_at=at,
    )


def test_fhir_correction_updates_the_same_resources_by_identifier() -> None:
    """The correction Bundle PUTs every resource of the original by its identifier, with
    status entered-in-error (withdrawn) or amended, under its own Bundle identifier."""
    original = build_bundle(message_id="RBORIG", result=_result(), order=None, study=None)
    for withdraw, status in ((True, "entered-in-error"), (False, "amended")):
        fixed = correction_bundle(original, message_id="RBFIX", withdraw=withdraw)
        assert fixed["identifier"]["value"] == "RBFIX"
        assert len(fixed["entry"]) == len(original["entry"]) == 3
        for before, after in zip(original["entry"], fixed["entry"], strict=True):
            assert after["resource"]["status"] == status
            assert after["request"]["method"] == "PUT"
            assert after["request"]["url"].endswith(before["request"]["ifNoneExist"])
            assert after["fullUrl"] == before["fullUrl"]


def test_oru_status_is_the_correction_code() -> None:
    """OBR-25 and every OBX-11 carry the status given (C, X or D); P by default."""
    for status in ("P", "C", "X", "D"):
        args = {} if status == "P" else {"status": status}
        text = build_oru(control_id="RB1", result=_result(), order=None, study=None, **args)
        segments = [s.split("|") for s in text.split("\r") if s]
        [obr] = [s for s in segments if s[0] == "OBR"]
        assert obr[25] == status
        assert {s[11] for s in segments if s[0] == "OBX"} == {status}
