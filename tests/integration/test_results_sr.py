"""JSON findings from AI vendors: parsing, the Comprehensive SR made of them, dciodvfy, Orthanc."""

from __future__ import annotations

import copy
import io
import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from adapters.dicom.synthetic import generate_study
from adapters.results.findings import parse_findings
from adapters.results.sr import (
    SourceStudy,
    findings_to_sr,
    findings_to_text,
    read_source_study,
    sr_uids,
)
from broker.model.domain import Code, Findings
from broker.model.errors import ResultError
from tests.peers import LOOPBACK, Orthanc, ensure_debian_packages, storescu

pytestmark = pytest.mark.xdist_group("results_sr")

CREATED = datetime(2024, 5, 1, 8, 15, 30)
DISCLAIMER_WORDS = "AI-generated result for review by a clinician; not a diagnosis"


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], SourceStudy]:
    """A small synthetic chest CT (20 slices of 64x64) and its SourceStudy."""
    paths = generate_study(
        "ct_chest", tmp_path_factory.mktemp("chest"), instances=20, rows=64, columns=64
    )
    return paths, read_source_study(paths)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], SourceStudy]:
    """A small synthetic head CT (8 slices of 64x64) and its SourceStudy."""
    paths = generate_study(
        "ct_head",
        tmp_path_factory.mktemp("head"),
        instances=8,
        rows=64,
        columns=64,
        patient_id="PAT0002",
        patient_name="ROE^RICHARD",
        accession="ACC0002",
    )
    return paths, read_source_study(paths)


def _code(system: str, value: str, meaning: str) -> dict[str, str]:
    return {"system": system, "value": value, "meaning": meaning}


def lung_nodules(source: SourceStudy) -> dict[str, Any]:
    """What a lung-nodule CT product returns: two nodules with size, volume and location."""
    inst = source.instances
    return {
        "study_instance_uid": source.study_uid,
        "algorithm": {"vendor": "LungAI Inc.", "product": "Lung Nodule CT", "version": "2.4.1"},
        "complete": True,
        "expected_objects": 0,
        "summary": "2 solid pulmonary nodules; largest 8.2 mm in the right upper lobe.",
        "findings": [
            {
                "code": _code("SCT", "786838002", "Pulmonary nodule"),
                "present": True,
                "text": "Solid nodule, right upper lobe. Lung-RADS 4A.",
                "score": 0.94,
                "site": _code("SCT", "42400003", "Upper lobe of right lung"),
                "measurements": [
                    {"code": _code("SCT", "81827009", "Diameter"), "value": 8.2, "unit": "mm"},
                    {"code": _code("SCT", "118565006", "Volume"), "value": 290.5, "unit": "mm3"},
                    {
                        "code": _code("DCM", "112031", "Attenuation Coefficient"),
                        "value": 35,
                        "unit": "[hnsf'U]",
                    },
                ],
                "references": [
                    {
                        "series_instance_uid": inst[6].series_uid,
                        "sop_instance_uid": inst[6].sop_instance_uid,
                    },
                    {
                        "series_instance_uid": inst[7].series_uid,
                        "sop_instance_uid": inst[7].sop_instance_uid,
                        "sop_class_uid": inst[7].sop_class_uid,
                    },
                ],
            },
            {
                "code": _code("http://snomed.info/sct", "786838002", "Pulmonary nodule"),
                "present": True,
                "score": 0.71,
                "site": _code("SCT", "41224006", "Lower lobe of left lung"),
                "measurements": [
                    {"code": _code("SCT", "81827009", "Diameter"), "value": 4.1, "unit": "mm"},
                    {"code": _code("SCT", "118565006", "Volume"), "value": 36.0, "unit": "mm3"},
                ],
                "references": [{"series_instance_uid": inst[15].series_uid}],
            },
        ],
    }


def head_bleed(source: SourceStudy) -> dict[str, Any]:
    """What a head-CT bleed triage product returns: hemorrhage present, urgent, probability."""
    inst = source.instances[4]
    return {
        "study_instance_uid": source.study_uid,
        "algorithm": {"vendor": "NeuroAI Ltd", "product": "ICH Triage CT", "version": "3.1.0"},
        "summary": "Suspected intracranial hemorrhage.",
        "findings": [
            {
                "code": _code("SCT", "1386000", "Intracranial hemorrhage"),
                "present": True,
                "urgent": True,
                "score": 0.97,
                "text": "Hyperdense extra-axial collection, left parietal.",
                "measurements": [
                    {"code": _code("SCT", "118565006", "Volume"), "value": 12.5, "unit": "mL"}
                ],
                "references": [
                    {
                        "series_instance_uid": inst.series_uid,
                        "sop_instance_uid": inst.sop_instance_uid,
                    }
                ],
            },
            {
                "code": _code("SCT", "230690007", "Cerebrovascular accident"),
                "present": False,
                "score": 0.08,
            },
        ],
    }


def nothing_found(source: SourceStudy) -> dict[str, Any]:
    """A product that found nothing in the study."""
    return {
        "study_instance_uid": source.study_uid,
        "algorithm": {"vendor": "NeuroAI Ltd", "product": "ICH Triage CT", "version": "3.1.0"},
        "findings": [],
    }


def _body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _meaning(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _texts(ds: Dataset) -> list[str]:
    return [str(i.TextValue) for i in _items(ds) if i.ValueType == "TEXT"]


def _dciodvfy(path: Path) -> list[str]:
    """dciodvfy's report lines on one file."""
    ensure_debian_packages("dciodvfy")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).splitlines()


# ------------------------------------------------------------------- parsing


def test_parse_lung_nodules(chest: tuple[list[Path], SourceStudy]) -> None:
    """A valid document becomes domain Findings; FHIR code system URIs become designators."""
    findings = parse_findings(_body(lung_nodules(chest[1])))
    assert findings.study_uid == chest[1].study_uid
    assert findings.algorithm.product == "Lung Nodule CT"
    assert len(findings.findings) == 2
    first, second = findings.findings
    assert first.code == Code("SCT", "786838002", "Pulmonary nodule")
    assert second.code == first.code  # "http://snomed.info/sct" -> "SCT"
    assert first.code.system_uri == "http://snomed.info/sct"
    assert [(m.name.meaning, m.value, m.unit) for m in first.measurements][:2] == [
        ("Diameter", 8.2, "mm"),
        ("Volume", 290.5, "mm3"),
    ]
    assert first.site == Code("SCT", "42400003", "Upper lobe of right lung")
    assert second.references[0].sop_instance_uid is None
    assert findings.complete and findings.expected_objects == 0
    assert not findings.urgent


def test_parse_head_bleed_is_urgent(head: tuple[list[Path], SourceStudy]) -> None:
    """An urgent finding makes the Findings urgent; defaults fill what the vendor left out."""
    findings = parse_findings(_body(head_bleed(head[1])))
    assert findings.urgent
    bleed, stroke = findings.findings
    assert bleed.present and bleed.urgent and bleed.score == 0.97
    assert not stroke.present and not stroke.urgent and stroke.measurements == ()


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, with value ..., delete) ``a.b[0].c`` in a document."""
    keys: list[str | int] = []
    for part in path.replace("]", "").split("."):
        name, *indexes = part.split("[")
        keys += [name, *map(int, indexes)]
    target: Any = doc
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


def test_readme_example_parses() -> None:
    """The example in the README's findings schema section is a valid document."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Results from vendors: the JSON findings schema") :]
    example = section[section.index("```json\n") + 8 : section.index("```\n\n|")]
    findings = parse_findings(example.encode())
    assert [f.code.meaning for f in findings.findings] == [
        "Pulmonary nodule",
        "Intracranial hemorrhage",
    ]
    assert findings.findings[1].code.system == "SCT"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("study_instance_uid", "1.2.03", "study_instance_uid: not a DICOM UID"),
        ("algorithm.version", ..., "algorithm.version: Field required"),
        ("algorithm.vendor", "", "algorithm.vendor: String should have at least 1 character"),
        ("algorithm.product", "x" * 65, "algorithm.product: String should have at most 64"),
        ("findings", ..., "findings: Field required"),
        ("findings[0].present", ..., "findings[0].present: Field required"),
        ("findings[0].present", "yes", "findings[0].present: Input should be a valid boolean"),
        ("findings[0].score", 1.5, "findings[0].score: Input should be less than or equal to 1"),
        ("findings[0].score", "0.9", "findings[0].score: Input should be a valid number"),
        ("findings[0].presnt", True, "findings[0].presnt: unknown field"),
        ("findings[0].code.system", "http://example.org/x", "findings[0].code.system: unknown"),
        ("findings[0].code.meaning", ..., "findings[0].code.meaning: Field required"),
        ("findings[1].measurements[0].unit", ..., "findings[1].measurements[0].unit: Field"),
        ("findings[0].measurements[1].unit", "cubic mm", "measurements[1].unit: not a UCUM"),
        ("findings[0].measurements[0].value", "8.2", "measurements[0].value: Input should be"),
        ("findings[0].references[0].series_instance_uid", "abc", "series_instance_uid: not a"),
        ("expected_objects", -1, "expected_objects: Input should be greater than or equal to 0"),
    ],
)
def test_parse_rejects_bad_field(
    chest: tuple[list[Path], SourceStudy], path: str, value: Any, expected: str
) -> None:
    """Each invalid document is refused with a problem that names the bad field."""
    doc = copy.deepcopy(lung_nodules(chest[1]))
    _set(doc, path, value)
    with pytest.raises(ResultError) as caught:
        parse_findings(_body(doc))
    assert any(p.startswith(expected) or expected in p for p in caught.value.problems), (
        caught.value.problems
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{", "body: not valid UTF-8 JSON"),
        (b"\xff\xfe", "body: not valid UTF-8 JSON"),
        (b"[]", "body: a JSON list; valid: a JSON object"),
        (b" " * (4 * 1024 * 1024 + 1), "body: 4194305 bytes; valid: at most"),
    ],
)
def test_parse_rejects_bad_body(body: bytes, expected: str) -> None:
    """A body that is not a JSON object (or too large) is refused, naming the body."""
    with pytest.raises(ResultError, match="^" + expected.replace("(", r"\(")):
        parse_findings(body)


# ------------------------------------------------------------------------ SR


@pytest.mark.parametrize("product", [lung_nodules, head_bleed, nothing_found])
def test_sr_passes_dciodvfy_and_names_the_ai(
    product: Any,
    chest: tuple[list[Path], SourceStudy],
    head: tuple[list[Path], SourceStudy],
    tmp_path: Path,
) -> None:
    """The SR passes dciodvfy, names vendor/product/version, carries the disclaimer, same study."""
    source = chest[1] if product is lung_nodules else head[1]
    findings = parse_findings(_body(product(source)))
    sr = findings_to_sr(findings, source, result_id=f"job-7/{product.__name__}", created=CREATED)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    report = _dciodvfy(path)
    print("\n".join(report))  # warnings are allowed; shown with -s
    assert "ComprehensiveSR" in report[0]
    assert [line for line in report if "Error" in line] == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == ComprehensiveSRStorage
    assert back.StudyInstanceUID == source.study_uid
    assert back.SeriesInstanceUID not in {i.series_uid for i in source.instances}
    assert back.PatientID == source.patient.patient_id
    assert back.AccessionNumber == source.accession_number
    assert back.Manufacturer == findings.algorithm.vendor
    assert back.ManufacturerModelName == findings.algorithm.product
    assert back.SoftwareVersions == findings.algorithm.version
    assert "not a diagnosis" in back.SeriesDescription
    assert back.VerificationFlag == "UNVERIFIED"
    algo = findings.algorithm
    assert any(
        t.startswith(DISCLAIMER_WORDS) and algo.vendor in t and algo.version in t
        for t in _texts(back)
    )
    algorithm = {
        _meaning(i): str(i.TextValue) for i in _items(back) if _meaning(i).startswith("Algorithm")
    }
    assert algorithm == {
        "Algorithm Name": findings.algorithm.product,
        "Algorithm Version": findings.algorithm.version,
        "Algorithm Manufacturer": findings.algorithm.vendor,
    }
    evidence = back.CurrentRequestedProcedureEvidenceSequence
    assert evidence[0].StudyInstanceUID == source.study_uid
    assert sum(len(s.ReferencedSOPSequence) for s in evidence[0].ReferencedSeriesSequence) == len(
        source.instances
    )


def test_sr_holds_the_bleed_as_urgent_present_with_probability(
    head: tuple[list[Path], SourceStudy],
) -> None:
    """Hemorrhage: present, Priority Urgent, probability 0.97, volume in mL, its source image."""
    source = head[1]
    sr = findings_to_sr(parse_findings(_body(head_bleed(source))), source, result_id="job-9/1")
    groups = [i for i in _items(sr) if _meaning(i) == "Measurement Group"]
    assert len(groups) == 2
    bleed = {_meaning(i): i for i in groups[0].ContentSequence}
    assert bleed["Finding"].ConceptCodeSequence[0].CodeValue == "1386000"
    assert bleed["Intracranial hemorrhage"].ConceptCodeSequence[0].CodeMeaning == "Present"
    assert bleed["Priority"].ConceptCodeSequence[0].CodeMeaning == "Urgent"
    probability = bleed["Probability"].MeasuredValueSequence[0]
    assert float(probability.NumericValue) == 0.97
    assert probability.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    volume = bleed["Volume"].MeasuredValueSequence[0]
    assert (float(volume.NumericValue), volume.MeasurementUnitsCodeSequence[0].CodeValue) == (
        12.5,
        "mL",
    )
    image = next(i for i in groups[0].ContentSequence if i.ValueType == "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.instances[4].sop_instance_uid
    )
    stroke = {_meaning(i): i for i in groups[1].ContentSequence}
    assert stroke["Cerebrovascular accident"].ConceptCodeSequence[0].CodeMeaning == "Absent"
    assert "Priority" not in stroke


def test_sr_holds_nodule_sizes_sites_and_images(chest: tuple[list[Path], SourceStudy]) -> None:
    """Lung nodules: one group each with diameter in mm, volume in mm3, site and source images."""
    source = chest[1]
    sr = findings_to_sr(parse_findings(_body(lung_nodules(source))), source, result_id="job-3/1")
    groups = [i for i in _items(sr) if _meaning(i) == "Measurement Group"]
    assert len(groups) == 2
    for group, (diameter, volume, site) in zip(
        groups,
        [(8.2, 290.5, "Upper lobe of right lung"), (4.1, 36.0, "Lower lobe of left lung")],
        strict=True,
    ):
        items = {_meaning(i): i for i in group.ContentSequence}
        measured = {
            name: (
                float(items[name].MeasuredValueSequence[0].NumericValue),
                items[name].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
            )
            for name in ("Diameter", "Volume")
        }
        assert measured == {"Diameter": (diameter, "mm"), "Volume": (volume, "mm3")}
        assert items["Finding Site"].ConceptCodeSequence[0].CodeMeaning == site
    images = [i for i in groups[0].ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
        source.instances[6].sop_instance_uid,
        source.instances[7].sop_instance_uid,
    ]
    # A whole-series reference stays evidence only.
    assert [i for i in groups[1].ContentSequence if i.ValueType == "IMAGE"] == []
    impression = [t for t in _texts(sr) if t.startswith("2 solid pulmonary nodules")]
    assert impression


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_sr_is_the_same_object_when_built_again(head: tuple[list[Path], SourceStudy]) -> None:
    """Same result id and index: same UIDs (identical bytes with the same time); else new UIDs."""
    source = head[1]
    findings = parse_findings(_body(head_bleed(source)))
    first = findings_to_sr(findings, source, result_id="job-42/result-1", created=CREATED)
    again = findings_to_sr(findings, source, result_id="job-42/result-1", created=CREATED)
    later = findings_to_sr(findings, source, result_id="job-42/result-1")
    assert first.SOPInstanceUID == again.SOPInstanceUID == later.SOPInstanceUID
    assert first.SeriesInstanceUID == later.SeriesInstanceUID
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == sr_uids("job-42/result-1", 0)
    assert _bytes(first) == _bytes(again)
    other_index = findings_to_sr(findings, source, result_id="job-42/result-1", index=1)
    other_result = findings_to_sr(findings, source, result_id="job-43/result-1")
    assert other_index.SOPInstanceUID != first.SOPInstanceUID
    assert other_index.SeriesInstanceUID == first.SeriesInstanceUID
    assert other_result.SOPInstanceUID != first.SOPInstanceUID


def test_sr_refuses_findings_about_another_study(
    chest: tuple[list[Path], SourceStudy], head: tuple[list[Path], SourceStudy]
) -> None:
    """Findings for one study cannot be filed under another."""
    findings = parse_findings(_body(head_bleed(head[1])))
    with pytest.raises(ResultError, match=r"study_instance_uid: .* is not the study the job sent"):
        findings_to_sr(findings, chest[1], result_id="job-1/1")


def test_sr_refuses_unknown_instance_without_sop_class(
    head: tuple[list[Path], SourceStudy],
) -> None:
    """A reference to an instance radbridge did not send needs its SOP class; the field is named."""
    source = head[1]
    doc = head_bleed(source)
    doc["findings"][0]["references"][0]["sop_instance_uid"] = "1.2.3.4.5"
    findings = parse_findings(_body(doc))
    with pytest.raises(ResultError) as caught:
        findings_to_sr(findings, source, result_id="job-1/1")
    assert caught.value.problems[0].startswith("findings[0].references[0].sop_instance_uid: ")
    doc["findings"][0]["references"][0]["sop_class_uid"] = source.instances[0].sop_class_uid
    sr = findings_to_sr(parse_findings(_body(doc)), source, result_id="job-1/1")
    listed = {
        ref.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert "1.2.3.4.5" in listed


def test_findings_to_text_summarises_for_people(head: tuple[list[Path], SourceStudy]) -> None:
    """The text names the product, flags URGENT, gives probabilities, ends with the disclaimer."""
    findings: Findings = parse_findings(_body(head_bleed(head[1])))
    text = findings_to_text(findings)
    lines = text.splitlines()
    assert lines[0] == "NeuroAI Ltd ICH Triage CT 3.1.0"
    assert (
        "- URGENT Intracranial hemorrhage: present, probability 97%, Volume 12.5 mL. "
        "Hyperdense extra-axial collection, left parietal."
    ) in lines
    assert "- Cerebrovascular accident: absent, probability 8%" in lines
    assert lines[-1].startswith(DISCLAIMER_WORDS)


# -------------------------------------------------------------------- Orthanc


def test_sr_is_filed_under_the_study_in_orthanc(
    head: tuple[list[Path], SourceStudy], tmp_path: Path
) -> None:
    """An SR sent by C-STORE to a real Orthanc lands in the source study as a second series."""
    paths, source = head
    sr = findings_to_sr(parse_findings(_body(head_bleed(source))), source, result_id="job-5/1")
    with Orthanc(tmp_path / "orthanc") as orthanc:
        storescu(paths, orthanc.dicom_port, called_ae="ORTHANC")
        ae = AE(ae_title="RADBRIDGE")
        ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, orthanc.dicom_port, ae_title="ORTHANC")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(sr)
        finally:
            assoc.release()
        assert status.Status == 0x0000

        found = orthanc.request("POST", "/tools/lookup", str(sr.SOPInstanceUID).encode())
        assert [f["Type"] for f in found] == ["Instance"]
        study = orthanc.get(f"/instances/{found[0]['ID']}/study")
        assert study["MainDicomTags"]["StudyInstanceUID"] == source.study_uid
        assert study["PatientMainDicomTags"]["PatientID"] == source.patient.patient_id
        assert len(orthanc.get("/studies")) == 1
        modalities = sorted(
            orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in study["Series"]
        )
        assert modalities == ["CT", "SR"]
