"""JSON findings -> DICOM Comprehensive SR (TID 1500 Measurement Report), with highdicom.

A vendor that answers with JSON only still gets an object into the PACS:
:func:`findings_to_sr` turns :class:`broker.model.domain.Findings` into a
Comprehensive SR filed under the source study (same Study Instance UID,
patient and study attributes copied from it) in a new series.

What every SR radbridge writes carries:

- the AI product: Manufacturer, Manufacturer's Model Name and Software
  Versions are the vendor, product and version; the observer is that device
  (TID 1004), and every measurement group names the algorithm (TID 4019);
- the statement :data:`DISCLAIMER` as a text item of the report, and
  "not a diagnosis" in its Series Description; Verification Flag UNVERIFIED;
- UIDs that depend only on ``result_id`` and ``index`` (:func:`sr_uids`), so a
  retried write-back sends the same object again instead of a second one.

Content tree (PS3.16 TID 1500)::

    Imaging Measurement Report
      Language, Observer: device (vendor, product), Procedure reported
      Imaging Measurements
        Measurement Group (TID 1501), one per finding
          Tracking identifier "Finding N" + UID
          Finding: <finding code>;  Finding site: <site code>
          Algorithm Identification: product, version, vendor
          Probability: <score> {1}                     (when the vendor gave a score)
          <measurement code>: <value> <UCUM unit>      (each measurement)
          <finding code>: Present | Absent             (qualitative evaluation)
          Priority: Urgent                             (urgent findings only)
          Source: IMAGE <referenced instance>          (each instance reference)
          Comment: <finding text>
      Qualitative Evaluations
        Impression: <summary>;  Comment: <disclaimer>

A vendor's reference to a whole series (no SOP Instance UID) is kept as
evidence only: every evaluated instance is listed in the Current Requested
Procedure Evidence Sequence anyway. A study without findings gets one group
"Finding: None".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code as SrCode
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DA, DT, TM

from broker.model import domain
from broker.model.domain import Findings, Patient
from broker.model.errors import ResultError

DISCLAIMER = (
    "AI-generated result for review by a clinician; not a diagnosis. "
    "Produced by {vendor} {product} version {version}."
)
#: Series Number of the first SR radbridge writes for a result (then +1 per index).
SERIES_NUMBER = 900
#: What the SR's Series Description starts with.
SERIES_DESCRIPTION = "AI result, not a diagnosis"
UTF8 = "ISO_IR 192"

# Concepts radbridge uses (PS3.16; SNOMED CT codes as DICOM lists them).
PRESENT = SrCode("52101004", "SCT", "Present")
ABSENT = SrCode("272519000", "SCT", "Absent")
PRIORITY = SrCode("260870009", "SCT", "Priority")
URGENT = SrCode("103391001", "SCT", "Urgent")
PROBABILITY = SrCode("122157", "DCM", "Probability")
NO_UNITS = SrCode("1", "UCUM", "no units")
NONE = SrCode("260413007", "SCT", "None")
FINDING = SrCode("121071", "DCM", "Finding")
COMMENT = SrCode("121106", "DCM", "Comment")
IMPRESSION = SrCode("121073", "DCM", "Impression")
QUALITATIVE_EVALUATIONS = SrCode("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_PROCEDURE = SrCode("363679005", "SCT", "Imaging procedure")
DEVICE = CodedConcept("121007", "DCM", "Device")
PROCESSING_EQUIPMENT = SrCode("109102", "DCM", "Processing Equipment")

#: Meanings for common UCUM codes (any other code is its own meaning).
UCUM_MEANINGS = {
    "mm": "millimeter",
    "cm": "centimeter",
    "mm2": "square millimeter",
    "cm2": "square centimeter",
    "mm3": "cubic millimeter",
    "cm3": "cubic centimeter",
    "mL": "milliliter",
    "ml": "milliliter",
    "%": "percent",
    "1": "no units",
    "[hnsf'U]": "Hounsfield unit",
    "s": "second",
    "d": "day",
    "a": "year",
    "deg": "degree",
    "g": "gram",
}

# Header attributes read from source files: parsing stops after the last of these.
_SOURCE_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyID",
]


@dataclass(frozen=True, slots=True)
class SourceInstance:
    """One evaluated instance of the source study."""

    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStudy:
    """What an SR needs from the study it reports on.

    ``instances`` are the evaluated instances (the series sent to the vendor);
    they become the SR's evidence and resolve the SOP class of a vendor's
    image reference. Build it with :func:`read_source_study` from the spooled
    files, or from the store's records.
    """

    study_uid: str
    patient: Patient
    instances: tuple[SourceInstance, ...]
    accession_number: str | None = None
    study_id: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    referring_physician: str | None = None

    @classmethod
    def from_datasets(cls, datasets: Iterable[Dataset]) -> SourceStudy:
        """From instance headers of one study (patient and study from the first)."""
        items = list(datasets)
        if not items:
            raise ResultError("source study: no instances; the SR needs at least one as evidence")
        first = items[0]

        def text(ds: Dataset, keyword: str) -> str | None:
            value = ds.get(keyword)
            return str(value) if value not in (None, "") else None

        study_uid = str(first.StudyInstanceUID)
        others = {str(ds.StudyInstanceUID) for ds in items} - {study_uid}
        if others:
            raise ResultError(f"source study: instances of several studies ({study_uid}, …)")
        return cls(
            study_uid=study_uid,
            patient=Patient(
                patient_id=text(first, "PatientID"),
                issuer=text(first, "IssuerOfPatientID"),
                name=text(first, "PatientName"),
                birth_date=text(first, "PatientBirthDate"),
                sex=text(first, "PatientSex"),
            ),
            instances=tuple(
                SourceInstance(
                    str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)
                )
                for ds in items
            ),
            accession_number=text(first, "AccessionNumber"),
            study_id=text(first, "StudyID"),
            study_date=text(first, "StudyDate"),
            study_time=text(first, "StudyTime"),
            referring_physician=text(first, "ReferringPhysicianName"),
        )


def read_source_study(paths: Iterable[Path | str]) -> SourceStudy:
    """A :class:`SourceStudy` from the headers of Part 10 files (pixel data is never read)."""
    datasets = []
    for path in paths:
        try:
            datasets.append(
                pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SOURCE_TAGS)
            )
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ResultError(f"source study: cannot read {path}: {exc}") from exc
    return SourceStudy.from_datasets(datasets)


def sr_uids(result_id: str, index: int = 0) -> tuple[UID, UID]:
    """(Series Instance UID, SOP Instance UID) of SR number ``index`` for one result.

    Derived from ``result_id`` only (e.g. ``"job-42/result-1"``): the same
    inputs give the same UIDs in every process, so a retry is recognised.
    """
    series = generate_uid(entropy_srcs=["radbridge-sr-series", result_id])
    instance = generate_uid(entropy_srcs=["radbridge-sr", result_id, str(index)])
    return series, instance


def _coded(code: domain.Code) -> CodedConcept:
    return CodedConcept(value=code.value, scheme_designator=code.system, meaning=code.meaning)


def _unit(unit: str) -> CodedConcept:
    return CodedConcept(value=unit, scheme_designator="UCUM", meaning=UCUM_MEANINGS.get(unit, unit))


def lo_text(text: str) -> str:
    """Text cut to the 64 characters of a DICOM LO value."""
    return text if len(text) <= 64 else text[:63] + "…"


def _evidence(source: SourceStudy, extra: Sequence[SourceInstance]) -> list[Dataset]:
    """One header per evaluated instance, with patient and study attributes on the first."""
    out: list[Dataset] = []
    for inst in (*source.instances, *extra):
        ds = Dataset()
        ds.StudyInstanceUID = source.study_uid
        ds.SeriesInstanceUID = inst.series_uid
        ds.SOPInstanceUID = inst.sop_instance_uid
        ds.SOPClassUID = inst.sop_class_uid
        out.append(ds)
    first = out[0]
    patient = source.patient
    first.SpecificCharacterSet = UTF8
    first.PatientName = patient.name or ""
    first.PatientID = patient.patient_id or ""
    if patient.issuer:
        first.IssuerOfPatientID = patient.issuer
    first.PatientBirthDate = patient.birth_date or ""
    first.PatientSex = patient.sex if patient.sex in ("M", "F", "O") else ""
    first.AccessionNumber = source.accession_number or ""
    first.StudyID = source.study_id or ""
    first.StudyDate = source.study_date or ""
    first.StudyTime = source.study_time or ""
    first.ReferringPhysicianName = source.referring_physician or ""
    return out


def _references(
    findings: Findings, source: SourceStudy
) -> tuple[dict[str, SourceInstance], list[SourceInstance]]:
    """Every referenced instance by SOP Instance UID, and those not among the source's."""
    known = {i.sop_instance_uid: i for i in source.instances}
    series = {i.series_uid for i in source.instances}
    resolved: dict[str, SourceInstance] = {}
    extra: list[SourceInstance] = []
    problems: list[str] = []
    for n, finding in enumerate(findings.findings):
        for m, ref in enumerate(finding.references):
            where = f"findings[{n}].references[{m}]"
            if ref.sop_instance_uid is None:
                if ref.series_uid not in series:
                    problems.append(
                        f"{where}.series_instance_uid: {ref.series_uid} is not a series "
                        "that was sent for this job"
                    )
                continue
            inst = known.get(ref.sop_instance_uid)
            if inst is None:
                if ref.sop_class_uid is None:
                    problems.append(
                        f"{where}.sop_instance_uid: {ref.sop_instance_uid} is not an instance "
                        "that was sent for this job; give its sop_class_uid to reference it"
                    )
                    continue
                inst = SourceInstance(ref.series_uid, ref.sop_instance_uid, ref.sop_class_uid)
                if inst.sop_instance_uid not in resolved:
                    extra.append(inst)
            resolved[inst.sop_instance_uid] = inst
    if problems:
        raise ResultError("cannot reference the images", problems)
    return resolved, extra


def _group(
    findings: Findings,
    index: int,
    result_id: str,
    references: dict[str, SourceInstance],
    provenance: Sequence[Provenance] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for finding ``index`` (or for "no findings" when there are none); the
    algorithm is the finding's own product when ``provenance`` names one per finding."""
    algo = provenance[index].algorithm if provenance else findings.algorithm
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=lo_text(algo.product), version=lo_text(algo.version), manufacturer=lo_text(algo.vendor)
    )
    tracking = hd.sr.TrackingIdentifier(
        uid=generate_uid(entropy_srcs=["radbridge-sr-finding", result_id, str(index)]),
        identifier=f"Finding {index + 1}",
    )
    if not findings.findings:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            algorithm_id=algorithm_id,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING, NONE)],
        )
    finding = findings.findings[index]
    code = _coded(finding.code)
    measurements = []
    if finding.score is not None:
        measurements.append(hd.sr.Measurement(name=PROBABILITY, value=finding.score, unit=NO_UNITS))
    measurements += [
        hd.sr.Measurement(name=_coded(m.name), value=m.value, unit=_unit(m.unit))
        for m in finding.measurements
    ]
    evaluations = [hd.sr.QualitativeEvaluation(code, PRESENT if finding.present else ABSENT)]
    if finding.urgent:
        evaluations.append(hd.sr.QualitativeEvaluation(PRIORITY, URGENT))
    sources = []
    for ref in finding.references:
        if ref.sop_instance_uid is not None:
            inst = references[ref.sop_instance_uid]
            sources.append(
                hd.sr.SourceImageForMeasurementGroup(inst.sop_class_uid, inst.sop_instance_uid)
            )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=code,
        finding_sites=[hd.sr.FindingSite(_coded(finding.site))] if finding.site else None,
        algorithm_id=algorithm_id,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=sources or None,
    )
    notes = [finding.text] if finding.text else []
    if provenance:
        notes.append(provenance[index].text)
    for note in notes:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=COMMENT, value=note, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    return group


@dataclass(frozen=True, slots=True)
class Provenance:
    """Which product a finding of a combined SR comes from, and what is said of it."""

    algorithm: domain.AlgorithmInfo
    text: str
    """Product, version, certificate, ownership: a comment of the finding's group."""


def disclaimer(algorithm: domain.AlgorithmInfo) -> str:
    """The statement every SR (and every text summary) carries, with the product's
    regulatory data when the hospital configured it."""
    text = DISCLAIMER.format(
        vendor=algorithm.vendor, product=algorithm.product, version=algorithm.version
    )
    if algorithm.regulatory:
        text += f" Regulatory data: {algorithm.regulatory}."
    return text


def findings_to_sr(
    findings: Findings,
    source: SourceStudy,
    *,
    result_id: str,
    index: int = 0,
    created: datetime | None = None,
    institution_name: str | None = None,
    provenance: Sequence[Provenance] = (),
) -> Dataset:
    """A Comprehensive SR (TID 1500) of ``findings``, filed under ``source``'s study.

    ``result_id`` names the result for good (e.g. ``"job-42/result-1"``) and
    ``index`` the SR among the objects made from it; together they fix the
    UIDs (:func:`sr_uids`). ``created`` becomes the content and instance
    creation date and time (default: now), so a retry with the same value
    gives an identical object. Raises :class:`ResultError` when the findings
    are not about ``source``'s study or reference images it cannot resolve.
    ``provenance`` (one per finding) makes a combined SR of several products: each
    group names its own product's algorithm and carries its provenance as a comment.
    """
    if provenance and len(provenance) != len(findings.findings):
        raise ResultError(
            f"{len(provenance)} provenances for {len(findings.findings)} findings; valid: one each"
        )
    if findings.study_uid != source.study_uid:
        raise ResultError(
            f"study_instance_uid: {findings.study_uid} is not the study the job sent "
            f"({source.study_uid})"
        )
    if not source.instances:
        raise ResultError("source study: no instances; the SR needs at least one as evidence")
    references, extra = _references(findings, source)
    algo = findings.algorithm
    created = created or datetime.now()
    device = hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(
                entropy_srcs=["radbridge-ai-device", algo.vendor, algo.product, algo.version]
            ),
            name=lo_text(algo.product),
            manufacturer_name=lo_text(algo.vendor),
            model_name=lo_text(algo.product),
        ),
    )
    count = max(len(findings.findings), 1)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[
            _group(findings, n, result_id, references, provenance) for n in range(count)
        ],
    )
    notes = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    notes.ContentSequence = hd.sr.ContentSequence()
    if findings.summary:
        notes.ContentSequence.append(
            hd.sr.TextContentItem(
                name=IMPRESSION,
                value=findings.summary,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    notes.ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT,
            value=disclaimer(algo),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    report[0].ContentSequence.append(notes)

    series_uid, sop_uid = sr_uids(result_id, index)
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=_evidence(source, extra),
            content=report[0],
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBER + index,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=lo_text(algo.vendor),
            manufacturer_model_name=lo_text(algo.product),
            software_versions=lo_text(algo.version),
            series_description=lo_text(f"{SERIES_DESCRIPTION}: {algo.product}"),
            is_complete=findings.complete,
            is_final=findings.complete,
            is_verified=False,
            institution_name=institution_name,
            content_date=created.date(),
            content_time=created.time(),
            series_date=created.date(),
            series_time=created.time(),
            specific_character_set=UTF8,
            contributing_equipment=[_radbridge_equipment(created)],
        )
    except (ValueError, TypeError) as exc:
        raise ResultError(f"cannot build the SR: {exc}") from exc
    # What highdicom stamps with "now" gets ``created`` too: a retry is byte-identical.
    sr.InstanceCreationDate = DA(created.date())
    sr.InstanceCreationTime = TM(created.time())
    for item in sr.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = DT(created)
    return sr


def _radbridge_equipment(created: datetime) -> hd.ContributingEquipment:
    try:
        own = version("radbridge")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        own = "unknown"
    return hd.ContributingEquipment(
        manufacturer="radbridge",
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name="radbridge",
        software_versions=own,
        contribution_datetime=created,
        contribution_description="Converted the AI vendor's JSON findings to DICOM SR",
    )


def findings_to_text(findings: Findings) -> str:
    """A short human-readable summary (for HL7 OBX / FHIR Observation text), disclaimer last.

    One line per finding: ``URGENT`` when flagged, the finding, present or
    absent, the probability in percent, the measurements and the vendor's text.
    """
    algo = findings.algorithm
    lines = [
        f"{algo.vendor} {algo.product} {algo.version}"
        + ("" if findings.complete else " (preliminary)")
    ]
    if findings.summary:
        lines.append(findings.summary)
    if not findings.findings:
        lines.append("No findings reported.")
    for finding in findings.findings:
        parts = [f"{finding.code.meaning}: {'present' if finding.present else 'absent'}"]
        if finding.score is not None:
            parts.append(f"probability {finding.score * 100:.0f}%")
        if finding.site is not None:
            parts.append(finding.site.meaning)
        parts += [f"{m.name.meaning} {m.value:g} {m.unit}" for m in finding.measurements]
        line = ("URGENT " if finding.urgent else "") + ", ".join(parts)
        lines.append(f"- {line}" + (f". {finding.text}" if finding.text else ""))
    lines.append(disclaimer(algo))
    return "\n".join(lines)
