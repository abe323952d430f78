"""Findings read back from a vendor's DICOM SR: round trips of radbridge's own TID 1500 SR,
other writers' reports, SRs without findings, garbage; the result timer keeping them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ComprehensiveSRStorage, generate_uid
from sqlalchemy import Engine
from structlog.testing import capture_logs

from adapters.dicom.synthetic import generate_study
from adapters.hl7.oru import build_oru
from adapters.results.findings import parse_findings
from adapters.results.sr import SourceStudy, findings_to_sr, read_source_study
from adapters.results.sr_read import findings_from_file, findings_from_sr
from broker.model.domain import AlgorithmInfo, Code, Findings, ResultObject, ResultOrigin
from broker.runtime.results import ResultTimer, write_result_object
from broker.store import StudyStore
from broker.store.jobs import JobStore
from broker.store.results import ResultPolicy, ResultStore
from tests.databases import empty_database
from tests.integration.test_results_sr import head_bleed, lung_nodules, nothing_found
from tests.writeback_data import Scene

pytestmark = pytest.mark.xdist_group("results_sr_read")

CREATED = datetime(2024, 5, 1, 8, 15, 30)
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> SourceStudy:
    """A small synthetic chest CT (20 slices of 32x32)."""
    folder = tmp_path_factory.mktemp("chest")
    return read_source_study(generate_study("ct_chest", folder, instances=20, rows=32, columns=32))


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> SourceStudy:
    """A small synthetic head CT (8 slices of 32x32)."""
    folder = tmp_path_factory.mktemp("head")
    return read_source_study(generate_study("ct_head", folder, instances=8, rows=32, columns=32))


def _findings(doc: dict[str, Any]) -> Findings:
    return parse_findings(json.dumps(doc).encode())


def _as_the_sr_holds(findings: Findings, source: SourceStudy) -> Findings:
    """What an SR can give back: image references carry their SOP class, a whole-series
    reference is evidence only (no IMAGE item), and the count of other objects is not kept."""
    classes = {i.sop_instance_uid: i.sop_class_uid for i in source.instances}
    return replace(
        findings,
        expected_objects=None,
        findings=tuple(
            replace(
                f,
                references=tuple(
                    replace(r, sop_class_uid=r.sop_class_uid or classes[r.sop_instance_uid])
                    for r in f.references
                    if r.sop_instance_uid is not None
                ),
            )
            for f in findings.findings
        ),
    )


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("product", [head_bleed, lung_nodules])
def test_findings_survive_the_round_trip_through_the_sr(
    product: Any, chest: SourceStudy, head: SourceStudy
) -> None:
    """findings -> radbridge's TID 1500 SR -> findings gives the same findings (codes, presence,
    score, urgency, measurements with UCUM units, site, text, images, algorithm, summary)."""
    source = head if product is head_bleed else chest
    findings = _findings(product(source))
    sr = findings_to_sr(findings, source, result_id="job-1/result-1", created=CREATED)
    assert findings_from_sr(sr) == _as_the_sr_holds(findings, source)


def test_round_trip_through_a_file_keeps_a_preliminary_result(
    head: SourceStudy, tmp_path: Path
) -> None:
    """A preliminary result (Completion Flag PARTIAL) read from a Part 10 file stays preliminary,
    and its urgent hemorrhage stays urgent."""
    findings = _findings(head_bleed(head) | {"complete": False})
    path = tmp_path / "sr.dcm"
    findings_to_sr(findings, head, result_id="job-2/result-1").save_as(
        path, enforce_file_format=True
    )
    back = findings_from_file(path)
    assert back == _as_the_sr_holds(findings, head)
    assert back is not None and not back.complete and back.urgent


def test_nothing_found_reads_as_findings_without_a_finding(head: SourceStudy) -> None:
    """The "Finding: None" group radbridge writes for a study without findings reads back as
    findings with no finding (the product found nothing), not as None."""
    findings = _findings(nothing_found(head))
    back = findings_from_sr(findings_to_sr(findings, head, result_id="job-3/result-1"))
    assert back == findings
    assert back is not None and back.findings == ()


# ------------------------------------------------------------ other writers' SRs


def _concept(scheme: str, value: str, meaning: str | None) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    if meaning is not None:
        code.CodeMeaning = meaning
    return code


def _item(kind: str, name: tuple[str, str, str], relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = kind
    item.ConceptNameCodeSequence = Sequence([_concept(*name)])
    return item


def _code(name: tuple[str, str, str], value: tuple[str, str, str]) -> Dataset:
    item = _item("CODE", name)
    item.ConceptCodeSequence = Sequence([_concept(*value)])
    return item


def _num(name: tuple[str, str, str], value: str, unit: tuple[str, str, str | None]) -> Dataset:
    item = _item("NUM", name)
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = Sequence([_concept(*unit)])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _text(name: tuple[str, str, str], value: str) -> Dataset:
    item = _item("TEXT", name)
    item.TextValue = value
    return item


def _container(name: tuple[str, str, str], items: list[Dataset]) -> Dataset:
    item = _item("CONTAINER", name)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(items)
    return item


def _document(sop_class: str, root: tuple[str, str, str], items: list[Dataset]) -> Dataset:
    ds = _container(root, items)
    del ds.RelationshipType
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = generate_uid()
    ds.CompletionFlag = "COMPLETE"
    return ds


BLEED = ("SCT", "1386000", "Intracranial hemorrhage")
PRESENT = ("SCT", "52101004", "Present")
ABSENT = ("SCT", "272519000", "Absent")
GROUP = ("DCM", "125007", "Measurement Group")
REPORT = ("DCM", "126000", "Imaging Measurement Report")


def _vendor_report() -> Dataset:
    """A TID 1500 report as another writer makes it: no algorithm items (header only), the
    probability in percent, a unit without a meaning, urgency and an extra evaluation at report
    level, a group that names no finding."""
    bleed = _container(
        GROUP,
        [
            _code(("DCM", "121071", "Finding"), BLEED),
            _num(("DCM", "122157", "Probability"), "97", ("UCUM", "%", "percent")),
            _num(("SCT", "118565006", "Volume"), "12.5", ("UCUM", "mL", None)),
            _code(BLEED, PRESENT),
        ],
    )
    unnamed = _container(GROUP, [_num(("SCT", "81827009", "Diameter"), "3", ("UCUM", "mm", "mm"))])
    evaluations = _container(
        ("UMLS", "C0034375", "Qualitative Evaluations"),
        [
            _code(("SCT", "396434000", "Midline shift"), ABSENT),
            _code(("SCT", "260870009", "Priority"), ("SCT", "103391001", "Urgent")),
            _text(("DCM", "121111", "Summary"), "Bleed suspected."),
        ],
    )
    ds = _document(
        ComprehensiveSRStorage,
        REPORT,
        [_container(("DCM", "126010", "Imaging Measurements"), [bleed, unnamed]), evaluations],
    )
    ds.Manufacturer = "Acme AI"
    ds.ManufacturerModelName = "ICH triage"
    ds.SoftwareVersions = ["2", "1"]
    return ds


def test_another_writers_report_gives_what_it_holds() -> None:
    """Another writer's TID 1500 report gives its findings: score from percent, a unit without a
    meaning, report-level urgency and evaluations, the algorithm from the header; the group that
    names no finding is skipped."""
    back = findings_from_sr(_vendor_report())
    assert back is not None
    assert back.algorithm == AlgorithmInfo("Acme AI", "ICH triage", "2 1")
    assert back.summary == "Bleed suspected."
    bleed, shift = back.findings
    assert bleed.code == Code(*BLEED)
    assert bleed.present and bleed.urgent and bleed.score == pytest.approx(0.97)
    assert [(m.name.meaning, m.value, m.unit) for m in bleed.measurements] == [
        ("Volume", 12.5, "mL")
    ]
    assert shift.code.meaning == "Midline shift"
    assert not shift.present and not shift.urgent
    assert back.study_uid == "1.2.3.4" and back.complete


def test_image_not_in_the_evidence_is_left_out(head: SourceStudy) -> None:
    """An IMAGE item whose instance the evidence does not list (no series to name) is dropped;
    the finding stays."""
    sr = findings_to_sr(_findings(head_bleed(head)), head, result_id="job-4/result-1")
    del sr.CurrentRequestedProcedureEvidenceSequence
    back = findings_from_sr(sr)
    assert back is not None
    assert back.findings[0].references == ()
    assert back.findings[0].code.value == "1386000"


# ------------------------------------------------------------ no findings to read


def test_basic_text_sr_has_no_findings() -> None:
    """A Basic Text SR (a dictated report, no TID 1500 structure) gives None."""
    ds = _document(
        BASIC_TEXT_SR,
        ("LN", "18748-4", "Diagnostic imaging report"),
        [_text(("DCM", "121071", "Finding"), "No acute intracranial abnormality.")],
    )
    assert findings_from_sr(ds) is None


def test_comprehensive_sr_of_another_template_has_no_findings() -> None:
    """A Comprehensive SR that is not a measurement report and codes no finding gives None."""
    ds = _document(
        ComprehensiveSRStorage,
        ("LN", "18748-4", "Diagnostic imaging report"),
        [_container(("DCM", "121070", "Findings"), [_text(("DCM", "121106", "Comment"), "x")])],
    )
    assert findings_from_sr(ds) is None


def test_report_whose_groups_name_no_finding_is_none_not_nothing_found() -> None:
    """A measurement report whose every group names no finding gives None: it must not read as
    "the product found nothing"."""
    ds = _document(
        ComprehensiveSRStorage,
        REPORT,
        [_container(GROUP, [_num(("SCT", "81827009", "Diameter"), "3", ("UCUM", "mm", "mm"))])],
    )
    assert findings_from_sr(ds) is None


def test_key_object_selection_and_non_sr_objects_have_no_findings(head: SourceStudy) -> None:
    """A key object selection, a CT image and a dataset without a content tree give None."""
    sr = findings_to_sr(_findings(head_bleed(head)), head, result_id="job-5/result-1")
    kos = Dataset()
    kos.update(sr)
    kos.SOPClassUID = KOS
    assert findings_from_sr(kos) is None
    ct = Dataset()
    ct.SOPClassUID = head.instances[0].sop_class_uid
    assert findings_from_sr(ct) is None
    bare = Dataset()
    bare.SOPClassUID = ComprehensiveSRStorage
    assert findings_from_sr(bare) is None


# ------------------------------------------------------------ garbage


@pytest.fixture
def sr_file(head: SourceStudy, tmp_path: Path) -> Path:
    """radbridge's SR of the head bleed, as a Part 10 file."""
    path = tmp_path / "sr.dcm"
    findings_to_sr(_findings(head_bleed(head)), head, result_id="job-6/result-1").save_as(
        path, enforce_file_format=True
    )
    return path


def test_unreadable_numeric_value_gives_none_and_a_warning(sr_file: Path) -> None:
    """A Numeric Value that is not a number (bytes changed in the file) gives None and a
    warning naming the problem, no exception."""
    data = sr_file.read_bytes()
    assert data.count(b"0.97") == 1
    sr_file.write_bytes(data.replace(b"0.97", b"x.97"))
    with capture_logs() as logs:
        assert findings_from_file(sr_file) is None
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "cannot read findings from an SR"
    assert "x.97" in warning["error"]


@pytest.mark.parametrize("data", [b"this is not DICOM", b""], ids=["text", "empty"])
def test_garbage_files_give_none_and_a_warning(sr_file: Path, data: bytes) -> None:
    """Text and an empty file give None with a warning, never raise."""
    sr_file.write_bytes(data)
    with capture_logs() as logs:
        assert findings_from_file(sr_file) is None
    assert [e for e in logs if e["log_level"] == "warning"]


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.5, 0.6, 0.8, 0.9])
def test_file_cut_short_never_raises_nor_claims_nothing_found(
    sr_file: Path, fraction: float
) -> None:
    """A file cut short never raises and never reads as "nothing found": None, or the
    findings pydicom could read (it does not report the cut)."""
    data = sr_file.read_bytes()
    sr_file.write_bytes(data[: int(len(data) * fraction)])
    back = findings_from_file(sr_file)
    assert back is None or back.findings


def test_missing_file_gives_none(tmp_path: Path) -> None:
    """A path that does not exist gives None and a warning."""
    with capture_logs() as logs:
        assert findings_from_file(tmp_path / "gone.dcm") is None
    assert logs[0]["event"] == "cannot read a result SR"


# ------------------------------------------------------------ the result timer


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite store."""
    with empty_database("sqlite", tmp_path) as eng:
        yield eng


def _vendor_sr(scene: Scene, job_id: int, store: ResultStore) -> tuple[int, Findings]:
    """The vendor's SR of the head bleed recorded as a C-STORE to the results AE would."""
    source = read_source_study(scene.paths)
    doc = head_bleed(replace(source, instances=source.instances * 2))  # it names the 5th
    inst = source.instances[1]
    doc["findings"][0]["references"] = [
        {"series_instance_uid": inst.series_uid, "sop_instance_uid": inst.sop_instance_uid}
    ]
    findings = _findings(doc)
    sr = findings_to_sr(findings, source, result_id=f"vendor/{job_id}", created=CREATED)
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    path = write_result_object(
        scene.spool, sr.StudyInstanceUID, sr.SOPInstanceUID, buffer.getvalue()
    )
    recorded = store.record_object(
        ResultObject(
            sop_instance_uid=str(sr.SOPInstanceUID),
            sop_class_uid=str(sr.SOPClassUID),
            series_uid=str(sr.SeriesInstanceUID),
            study_uid=str(sr.StudyInstanceUID),
            path=str(path),
            size=path.stat().st_size,
            origin=ResultOrigin.DICOM,
        ),
        transfer_syntax_uid=str(sr.file_meta.TransferSyntaxUID),
        vendors=["ichai"],
        urgent=True,
    )
    assert recorded.job_id == job_id
    return recorded.result_id, findings


def _timer(engine: Engine, scene: Scene, **options: Any) -> ResultTimer:
    return ResultTimer(
        ResultStore(engine), JobStore(engine), StudyStore(engine), scene.spool, **options
    )


def test_timer_keeps_the_findings_of_the_vendors_sr_and_the_oru_carries_them(
    engine: Engine, tmp_path: Path
) -> None:
    """A result with the vendor's SR and no JSON findings completes with the SR's findings
    (through the ``result_findings`` entry point), makes no SR of its own, and its ORU^R01
    has an OBX per finding: coded OBX-3, present in OBX-5, AA in OBX-8, P in OBX-11."""
    scene = Scene.make(engine, tmp_path)
    job = scene.job()
    timer = _timer(engine, scene)
    result_id, findings = _vendor_sr(scene, job.id, timer.store)
    assert timer.tick(datetime.now(UTC) + timedelta(minutes=5)) == [result_id]
    result = timer.store.get(result_id)
    assert result.findings == _as_the_sr_holds(findings, read_source_study(scene.paths))
    assert [o.origin for o in result.objects] == [ResultOrigin.DICOM]
    assert timer.store.detail(result_id)["error"] is None
    oru = build_oru(control_id="1", result=result, order=None, study=None)
    [bleed] = [s for s in oru.split("\r") if s.startswith("OBX|") and "|1386000^" in s]
    fields = bleed.split("|")
    assert fields[5].startswith("121053^Present") and fields[8] == "AA" and fields[11] == "P"


def test_reading_again_changes_nothing_and_json_findings_win(
    engine: Engine, tmp_path: Path
) -> None:
    """Reading the SR again keeps the stored findings (idempotent); a result that has the
    vendor's JSON findings keeps them and its SR is not read."""
    scene = Scene.make(engine, tmp_path)
    job = scene.job()
    timer = _timer(engine, scene)
    result_id, _ = _vendor_sr(scene, job.id, timer.store)
    assert timer.read_sr_findings(timer.store.get(result_id)) is None
    first = timer.store.get(result_id).findings
    assert first is not None
    assert timer.read_sr_findings(timer.store.get(result_id)) is None
    assert timer.store.get(result_id).findings == first
    assert not timer.store.record_sr_findings(result_id, replace(first, summary="other"))

    other = Scene.make(engine, tmp_path / "other", tag="b")
    other_job = other.job()
    other_id, _ = _vendor_sr(other, other_job.id, timer.store)
    own = Findings(
        study_uid=other.study_uid, algorithm=AlgorithmInfo("Acme AI", "ICH triage", "2.1")
    )
    assert timer.store.record_findings(other_job.id, own) == other_id
    read: list[str] = []

    def reader(path: str) -> Findings | None:
        read.append(path)
        return None

    _timer(engine, other, read_findings=reader).tick(datetime.now(UTC) + timedelta(minutes=5))
    assert timer.store.get(other_id).findings == own
    assert read == []


def test_sr_findings_do_not_make_a_counted_result_preliminary(
    engine: Engine, tmp_path: Path
) -> None:
    """A vendor announcing one object completes by count, and stays "count" once the SR's
    (complete) findings are kept: they do not read as preliminary JSON findings."""
    scene = Scene.make(engine, tmp_path)
    job = scene.job()
    store = ResultStore(engine, {"ichai": ResultPolicy(expected_objects=1)})
    timer = ResultTimer(store, JobStore(engine), StudyStore(engine), scene.spool)
    result_id, _ = _vendor_sr(scene, job.id, store)
    assert timer.tick() == [result_id]  # due at once: the announced object is in
    assert store.get(result_id).findings is not None
    assert store.detail(result_id)["complete_reason"] == "count"
