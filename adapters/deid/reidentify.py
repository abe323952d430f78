"""What a vendor of de-identified studies returns, mapped back to the original study.

A result object (SR, SEG, SC, KOS… by C-STORE or STOW-RS) is rewritten before
it is stored (:func:`reidentify_file`): every UID in it, at any depth, that is a
pseudonym radbridge issued becomes the original again (study, series, instances
it references, frame of reference…); Patient ID, Patient's Name and Accession
Number pseudonyms become the originals; the patient's attributes come from the
study radbridge holds. The object's own SOP Instance UID, and every UID
radbridge never issued (the result's new series, its own UIDs), are kept as the
vendor made them. An object none of whose values radbridge issued is left as it
came: it matches no job and is kept as an orphan, never guessed.

JSON findings (:func:`reidentify_findings`) get their study and image references
mapped back the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalid
from pydicom.multival import MultiValue

from adapters.deid.dataset import ACCESSION, PATIENT_ID, PATIENT_NAME
from broker.model.deid import Pseudonym, PseudonymKind
from broker.model.domain import Findings, ImageReference
from broker.model.errors import InvalidDicomError, NotFoundError
from broker.store import StudyStore
from broker.store.pseudonyms import PseudonymStore

_IDENTITY_TAGS = frozenset({PATIENT_ID, PATIENT_NAME, ACCESSION})
_MARKS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")


@dataclass(frozen=True, slots=True)
class Reidentified:
    """What re-identifying one result object did."""

    study_uid: str
    """The original study the object goes with."""
    mapped: int
    """Values that were pseudonyms and are the originals again."""


def _values(ds: Dataset, found: set[str]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _values(item, found)
        elif elem.VR == "UI" or int(elem.tag) in _IDENTITY_TAGS:
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            found.update(str(v) for v in values if v)


def _map(ds: Dataset, known: Mapping[str, Pseudonym], *, top: bool) -> int:
    mapped = 0
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                mapped += _map(item, known, top=False)
            continue
        if elem.VR != "UI" and int(elem.tag) not in _IDENTITY_TAGS:
            continue
        if top and elem.keyword == "SOPInstanceUID":
            continue  # the result's own UID, whatever it looks like
        if isinstance(elem.value, MultiValue):
            values = [str(v) for v in elem.value]
            new = [known[v].original if v in known else v for v in values]
            mapped += sum(a != b for a, b in zip(values, new, strict=True))
            elem.value = new
        elif elem.value and str(elem.value) in known:
            elem.value = known[str(elem.value)].original
            mapped += 1
    return mapped


def _original_study(ds: Dataset, known: Mapping[str, Pseudonym]) -> str:
    own = known.get(str(ds.get("StudyInstanceUID", "")))
    if own is not None and own.kind is PseudonymKind.STUDY:
        return own.original
    studies = [p.original for p in known.values() if p.kind is PseudonymKind.STUDY]
    return studies[0] if studies else next(iter(known.values())).study_uid


def _restore_patient(ds: Dataset, studies: StudyStore, study_uid: str) -> None:
    try:
        study = studies.get_study(study_uid)
    except NotFoundError:
        return
    patient = study.patient
    restored = {
        "PatientID": patient.patient_id or "",
        "PatientName": patient.name or "",
        "PatientBirthDate": patient.birth_date or "",
        "PatientSex": patient.sex or "",
    }
    if any(not v.isascii() for v in restored.values()):
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in restored.items():
        setattr(ds, keyword, value)
    if patient.issuer:
        ds.IssuerOfPatientID = patient.issuer
    if study.accession_number is not None:
        ds.AccessionNumber = study.accession_number
    for keyword in _MARKS:
        if keyword in ds:
            delattr(ds, keyword)


def reidentify_file(
    path: Path, pseudonyms: PseudonymStore, studies: StudyStore
) -> Reidentified | None:
    """Rewrite the result object at ``path`` with the originals (see the module); None when
    it names nothing radbridge issued (it is left as it is)."""
    try:
        ds = dcmread(path)
        found: set[str] = set()
        _values(ds, found)
    except (PydicomInvalid, OSError, ValueError, EOFError, KeyError) as exc:
        raise InvalidDicomError(f"cannot read the result object: {exc}") from exc
    known = pseudonyms.lookup(found)
    if not known:
        return None
    mapped = _map(ds, known, top=True)
    study_uid = _original_study(ds, known)
    _restore_patient(ds, studies, study_uid)
    try:
        ds.save_as(path, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidDicomError(f"cannot write the re-identified result object: {exc}") from exc
    return Reidentified(study_uid=study_uid, mapped=mapped)


def reidentify_findings(findings: Findings, pseudonyms: PseudonymStore) -> Findings:
    """``findings`` with their study and image references mapped back where radbridge
    issued them (other values kept)."""
    values = {findings.study_uid}
    for finding in findings.findings:
        for ref in finding.references:
            values.update(v for v in (ref.series_uid, ref.sop_instance_uid) if v)
    known = pseudonyms.lookup(values)
    if not known:
        return findings

    def back(value: str | None) -> str | None:
        return known[value].original if value is not None and value in known else value

    def reference(ref: ImageReference) -> ImageReference:
        return replace(
            ref, series_uid=back(ref.series_uid) or "", sop_instance_uid=back(ref.sop_instance_uid)
        )

    return replace(
        findings,
        study_uid=back(findings.study_uid) or findings.study_uid,
        findings=tuple(
            replace(f, references=tuple(reference(r) for r in f.references))
            for f in findings.findings
        ),
    )
