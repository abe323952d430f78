"""DICOM SR from a vendor -> :class:`broker.model.domain.Findings` (TID 1500 Measurement Report).

A vendor that answers with an SR instead of JSON findings still gets its
findings into the ORU^R01 and the FHIR DiagnosticReport: :func:`findings_from_sr`
reads them back from the content tree. It reads what
:func:`adapters.results.sr.findings_to_sr` writes, and what other TID 1500
writers put in the same places:

- each Measurement Group (DCM 125007, TID 1501) is one finding: its
  ``Finding`` (DCM 121071) code, ``Finding Site`` (SCT 363698007), a
  qualitative evaluation ``<finding>: Present | Absent`` (SCT 52101004 /
  272519000; no evaluation: present), ``Priority: Urgent``, the ``Probability``
  (DCM 122157; in ``%`` it is divided by 100) as score, every other numeric item
  as a measurement with its UCUM unit, the ``Source of Measurement`` images
  (their series from the evidence sequences) and a ``Comment`` as text;
- a ``Qualitative Evaluations`` container (UMLS C0034375) outside the groups:
  each ``<concept>: Present | Absent`` is a finding, its ``Impression``
  (DCM 121073) or ``Summary`` (DCM 121111) the summary, and a ``Priority:
  Urgent`` there makes every present finding urgent;
- the algorithm: TID 4019 in a group (Algorithm Name, Version, Manufacturer),
  else Manufacturer's Model Name, Software Versions and Manufacturer of the
  header, else the device observer (TID 1004);
- ``complete`` is the Completion Flag (``PARTIAL``: preliminary).

The content tree is walked here rather than parsed with
``highdicom.sr.MeasurementReport.from_sequence``: highdicom refuses a whole
report for one code without a meaning, and does not expose the algorithm or a
group's comment. A group without a finding code, a measurement without a
number or a unit, or an image not listed in the evidence is skipped. An SR
without any finding (a Basic Text SR, a report of other templates) gives
None, as does a key object selection; only a report that says ``Finding:
None`` (the group radbridge writes when the product found nothing) gives
findings with no finding, never a report whose groups could not be read.
Content pydicom cannot read gives None and a warning; nothing raises. A file
cut short inside its content tree is read as far as pydicom gets (pydicom
does not report the cut), so it may give fewer findings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from broker.model.domain import AlgorithmInfo, Code, Finding, Findings, ImageReference, Measurement
from broker.model.logging import get_logger

LOG = get_logger("radbridge.results")

#: Storage SOP classes whose content tree may hold findings (key object selection holds none).
READABLE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    }
)
#: How deep the content tree is searched for measurement groups.
MAX_DEPTH = 8
#: Most findings read from one SR (as many as the JSON schema allows).
MAX_FINDINGS = 1000
UNKNOWN = "unknown"

# (scheme, value) of the concepts read; see adapters/results/sr.py for those written.
MEASUREMENT_GROUP = ("DCM", "125007")
QUALITATIVE_EVALUATIONS = ("UMLS", "C0034375")
FINDING = ("DCM", "121071")
FINDING_SITE = ("SCT", "363698007")
PRESENT = ("SCT", "52101004")
ABSENT = ("SCT", "272519000")
NONE = ("SCT", "260413007")
PRIORITY = ("SCT", "260870009")
URGENT = ("SCT", "103391001")
PROBABILITY = ("DCM", "122157")
COMMENT = ("DCM", "121106")
IMPRESSION = ("DCM", "121073")
SUMMARY = ("DCM", "121111")
ALGORITHM_NAME = ("DCM", "111001")
ALGORITHM_VERSION = ("DCM", "111003")
ALGORITHM_MANUFACTURER = ("DCM", "122405")
DEVICE_MANUFACTURER = ("DCM", "121014")
DEVICE_MODEL = ("DCM", "121015")
_EVIDENCE = ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")


def findings_from_file(path: str | Path) -> Findings | None:
    """:func:`findings_from_sr` of a Part 10 file; None (and a warning) if it cannot be read.

    Registered as ``result_findings`` under the ``radbridge.registries`` entry points.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # any unreadable file: no findings, never a crash
        LOG.warning("cannot read a result SR", path=str(path), error=str(exc))
        return None
    return findings_from_sr(ds)


def findings_from_sr(ds: Dataset) -> Findings | None:
    """The findings of a TID 1500 measurement report, or None when the SR holds none.

    Never raises: content that cannot be read gives None and a warning.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class and sop_class not in READABLE_CLASSES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read(ds)
    except Exception as exc:  # a vendor's malformed SR must not stop its result
        LOG.warning(
            "cannot read findings from an SR",
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            sop_class_uid=sop_class,
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


# ------------------------------------------------------------------ content items


def _items(ds: Dataset, keyword: str = "ContentSequence") -> list[Dataset]:
    value = ds.get(keyword)
    return list(value) if value else []


def _code(item: Dataset, keyword: str) -> Code | None:
    """The first code of a code sequence, or None when it is absent or has no value."""
    items = _items(item, keyword)
    if not items:
        return None
    c = items[0]
    value = c.get("CodeValue") or c.get("LongCodeValue") or c.get("URNCodeValue")
    scheme = c.get("CodingSchemeDesignator")
    if not value or not scheme:
        return None
    meaning = str(c.get("CodeMeaning") or "").strip() or str(value)
    return Code(str(scheme).strip(), str(value).strip(), meaning)


def _key(code: Code | None) -> tuple[str, str] | None:
    return None if code is None else (code.system, code.value)


def _name(item: Dataset) -> tuple[str, str] | None:
    return _key(_code(item, "ConceptNameCodeSequence"))


def _text(item: Dataset) -> str | None:
    text = str(item.get("TextValue") or "").strip()
    return text or None


def _number(item: Dataset) -> tuple[float, str] | None:
    """(value, UCUM unit) of a NUM item; None without a value or unit."""
    measured = _items(item, "MeasuredValueSequence")
    if not measured or measured[0].get("NumericValue") in (None, ""):
        return None
    unit = _code(measured[0], "MeasurementUnitsCodeSequence")
    if unit is None:
        return None
    return float(measured[0].NumericValue), unit.value


def _value_type(item: Dataset) -> str:
    return str(item.get("ValueType", "") or "")


def _walk(items: Sequence[Dataset], depth: int = 0) -> Iterator[Dataset]:
    """Every content item, depth first, down to :data:`MAX_DEPTH`."""
    if depth > MAX_DEPTH:
        return
    for item in items:
        yield item
        yield from _walk(_items(item), depth + 1)


# ------------------------------------------------------------------ reading


@dataclass
class _Report:
    """What the walk collected."""

    series_of: dict[str, str]
    findings: list[Finding] = field(default_factory=list)
    algorithm: dict[tuple[str, str], str] = field(default_factory=dict)
    summary: str | None = None
    urgent: bool = False
    nothing_found: bool = False
    skipped: int = 0


def _series_of(ds: Dataset) -> dict[str, str]:
    """Series Instance UID by SOP Instance UID, from the SR's evidence sequences."""
    out: dict[str, str] = {}
    for keyword in _EVIDENCE:
        for study in _items(ds, keyword):
            for series in _items(study, "ReferencedSeriesSequence"):
                uid = str(series.get("SeriesInstanceUID", "") or "")
                for sop in _items(series, "ReferencedSOPSequence"):
                    instance = str(sop.get("ReferencedSOPInstanceUID", "") or "")
                    if uid and instance:
                        out.setdefault(instance, uid)
    return out


def _reference(item: Dataset, report: _Report) -> ImageReference | None:
    sops = _items(item, "ReferencedSOPSequence")
    if not sops:
        return None
    instance = str(sops[0].get("ReferencedSOPInstanceUID", "") or "")
    series = report.series_of.get(instance)
    if not instance or series is None:
        return None
    sop_class = str(sops[0].get("ReferencedSOPClassUID", "") or "") or None
    return ImageReference(series, instance, sop_class)


def _says_nothing(group: Dataset) -> bool:
    """Whether a measurement group is ``Finding: None`` (the product found nothing)."""
    return any(
        _name(item) == FINDING and _key(_code(item, "ConceptCodeSequence")) == NONE
        for item in _items(group)
    )


def _group(group: Dataset, report: _Report) -> Finding | None:
    """One TID 1501 measurement group as a finding (None: it names no finding)."""
    finding: Code | None = None
    site: Code | None = None
    evaluations: list[tuple[Code, bool]] = []
    urgent = False
    score: float | None = None
    measurements: list[Measurement] = []
    references: list[ImageReference] = []
    text: str | None = None
    for item in _items(group):
        name = _name(item)
        kind = _value_type(item)
        if kind == "CODE":
            value = _code(item, "ConceptCodeSequence")
            if name == FINDING:
                finding = finding or value
            elif name == FINDING_SITE:
                site = site or value
            elif name == PRIORITY:
                urgent = urgent or _key(value) == URGENT
            elif _key(value) in (PRESENT, ABSENT):
                concept = _code(item, "ConceptNameCodeSequence")
                if concept is not None:
                    evaluations.append((concept, _key(value) == PRESENT))
        elif kind == "TEXT":
            if name in (ALGORITHM_NAME, ALGORITHM_VERSION, ALGORITHM_MANUFACTURER):
                if (value_text := _text(item)) is not None:
                    report.algorithm.setdefault(name, value_text)
            elif name == COMMENT:
                text = text or _text(item)
        elif kind == "NUM":
            number = _number(item)
            concept = _code(item, "ConceptNameCodeSequence")
            if number is None or concept is None:
                continue
            value_num, unit = number
            if name == PROBABILITY and score is None:
                probability = value_num / 100 if unit == "%" else value_num
                if 0.0 <= probability <= 1.0:
                    score = probability
                    continue
            measurements.append(Measurement(concept, value_num, unit))
        elif kind == "IMAGE" and (ref := _reference(item, report)) is not None:
            references.append(ref)
    if finding is None and evaluations:
        finding = evaluations[0][0]
    if finding is None:
        return None
    present = next((p for c, p in evaluations if _key(c) == _key(finding)), None)
    if present is None:
        present = evaluations[0][1] if len(evaluations) == 1 else True
    return Finding(
        code=finding,
        present=present,
        text=text,
        score=score,
        urgent=urgent,
        measurements=tuple(measurements),
        references=tuple(references),
        site=site,
    )


def _evaluations(container: Dataset, report: _Report) -> None:
    """A ``Qualitative Evaluations`` container outside the groups: summary, findings, urgency."""
    for item in _items(container):
        name = _name(item)
        kind = _value_type(item)
        if kind == "TEXT" and name in (IMPRESSION, SUMMARY):
            report.summary = report.summary or _text(item)
        elif kind == "CODE":
            value = _code(item, "ConceptCodeSequence")
            if name == PRIORITY:
                report.urgent = report.urgent or _key(value) == URGENT
            elif _key(value) in (PRESENT, ABSENT):
                concept = _code(item, "ConceptNameCodeSequence")
                if concept is not None:
                    present = _key(value) == PRESENT
                    report.findings.append(Finding(code=concept, present=present))
            elif name == FINDING and value is not None:
                if _key(value) == NONE:
                    report.nothing_found = True
                else:
                    report.findings.append(Finding(code=value, present=True))


def _header_text(ds: Dataset, keyword: str) -> str | None:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = " ".join(str(v) for v in value if str(v).strip())
    else:
        text = str(value)
    return text.strip() or None


def _algorithm(ds: Dataset, report: _Report, observer: dict[tuple[str, str], str]) -> AlgorithmInfo:
    found = report.algorithm
    return AlgorithmInfo(
        vendor=found.get(ALGORITHM_MANUFACTURER)
        or _header_text(ds, "Manufacturer")
        or observer.get(DEVICE_MANUFACTURER)
        or UNKNOWN,
        product=found.get(ALGORITHM_NAME)
        or _header_text(ds, "ManufacturerModelName")
        or observer.get(DEVICE_MODEL)
        or UNKNOWN,
        version=found.get(ALGORITHM_VERSION) or _header_text(ds, "SoftwareVersions") or UNKNOWN,
    )


def _read(ds: Dataset) -> Findings | None:
    if _value_type(ds) != "CONTAINER" or not _items(ds):
        return None
    report = _Report(series_of=_series_of(ds))
    observer: dict[tuple[str, str], str] = {}
    for item in _items(ds):
        name = _name(item)
        if name in (DEVICE_MANUFACTURER, DEVICE_MODEL) and (text := _text(item)):
            observer.setdefault(name, text)
    groups: list[Finding] = []
    for item in _walk(_items(ds)):
        if _value_type(item) != "CONTAINER":
            continue
        name = _name(item)
        if name == MEASUREMENT_GROUP:
            if _says_nothing(item):
                report.nothing_found = True
            elif (finding := _group(item, report)) is not None:
                groups.append(finding)
            else:
                report.skipped += 1
        elif name == QUALITATIVE_EVALUATIONS:
            _evaluations(item, report)
    findings = groups + report.findings
    if report.urgent:
        findings = [replace(f, urgent=True) if f.present else f for f in findings]
    if not findings and (report.skipped or not report.nothing_found):
        return None  # only an explicit "Finding: None" says the product found nothing
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    if not study_uid:
        return None
    return Findings(
        study_uid=study_uid,
        algorithm=_algorithm(ds, report, observer),
        findings=tuple(findings[:MAX_FINDINGS]),
        complete=str(ds.get("CompletionFlag", "COMPLETE") or "COMPLETE").upper() != "PARTIAL",
        summary=report.summary,
    )
