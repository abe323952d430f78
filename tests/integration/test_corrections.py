"""Corrections: results already written are withdrawn or corrected when what they were based
on changed (an ADT merge or update, a cancelled order, a rejection note), through the store
and the write-back stage, against a real MLLP RIS and a FHIR receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from sqlalchemy import Engine

from broker.engine.writeback_stage import WritebackStage
from broker.model.correction import (
    REJECTED_FOR_PATIENT_SAFETY,
    CorrectionCause,
    RejectionNote,
)
from broker.model.domain import InboundMessage, Order, OrderSource, OrderStatus, Patient
from broker.model.jobs import JobState
from broker.model.writeback import DeliveryKind, DeliveryState
from broker.store import StudyStore
from broker.store.audit import AuditLog
from broker.store.corrections import CorrectionStore
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.orders import OrderStore
from tests.databases import DATABASES, empty_database
from tests.fhir_receiver import FhirReceiver
from tests.integration.test_writeback import drain, make_stage
from tests.peers import LOOPBACK
from tests.ris import Ris
from tests.writeback_data import Scene

ROUTES = {"head-ct": ("ris", "emr")}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with empty_database("sqlite", tmp_path) as eng:
        yield eng


def adt(kind: str) -> InboundMessage:
    return InboundMessage(
        source=OrderSource.HL7, kind=kind, raw=b"MSH|^~\\&|HIS", control_id=f"{kind}-1"
    )


def written(
    engine: Engine, tmp_path: Path, ris: Ris, emr: FhirReceiver, **hl7: object
) -> tuple[Scene, WritebackStage, int]:
    """A study with its order and a result written to the RIS and the FHIR receiver."""
    scene = Scene.make(engine, tmp_path)
    scene.order()
    job = scene.job()
    result_id = scene.result(job, sr=False)
    stage = make_stage(
        engine,
        {
            "ris": ("hl7", {"host": LOOPBACK, "port": ris.port, "timeout": 5, **hl7}),
            "emr": ("fhir", {"url": emr.url}),
        },
        routes=ROUTES,
    )
    stage.schedule(result_id)
    assert drain(stage, "ris") == [DeliveryState.DONE]
    assert drain(stage, "emr") == [DeliveryState.DONE]
    return scene, stage, result_id


def statuses(message: hl7.Message) -> tuple[str, set[str]]:
    """(OBR-25, every OBX-11) of an ORU."""
    obr = str(message.segment("OBR")[25])
    return obr, {str(s[11]) for s in message.segments("OBX")}


def test_merge_corrects_the_ris_and_fhir_under_the_surviving_patient(
    engine: Engine, tmp_path: Path
) -> None:
    """An ADT^A40 after write-back makes one correction per target in the merge's
    transaction: the RIS gets the ORU again with status C under the surviving patient, the
    FHIR server the same DiagnosticReport and Observations amended with the new subject;
    the correction and each corrected delivery are audited."""
    with Ris() as ris, FhirReceiver() as emr:
        scene, stage, result_id = written(engine, tmp_path, ris, emr)
        OrderStore(engine).merge_patients(
            Patient(patient_id="PAT0009", name="ROE^RICHARD^M", issuer=None),
            Patient(patient_id="PAT0002"),
            adt("ADT^A40"),
        )
        made = DeliveryStore(engine).list(kind=DeliveryKind.CORRECTION)
        assert sorted(d.target for d in made) == ["emr", "ris"]
        assert {d.event for d in made} == {"patient_changed"}
        assert drain(stage, "ris") == [DeliveryState.DONE]
        assert drain(stage, "emr") == [DeliveryState.DONE]
    first, again = ris.messages()
    assert statuses(first) == ("P", {"P"})
    assert statuses(again) == ("C", {"C"})
    assert str(again.segment("PID")[3]).split("^")[0] == "PAT0009"
    assert str(again.segment("MSH")[10]) != str(first.segment("MSH")[10])
    assert "corrected" in str(again.segments("NTE"))
    original, corrected = emr.bundles
    report_key = original["entry"][0]["request"]["ifNoneExist"]
    report = emr.created[report_key]
    assert report["status"] == "amended"
    assert report["subject"]["identifier"]["value"] == "PAT0009"
    observations = [e["resource"] for e in corrected["entry"][1:]]
    assert observations and {o["status"] for o in observations} == {"amended"}
    assert corrected["entry"][0]["request"]["method"] == "PUT"
    audit = AuditLog(engine)
    [opened] = audit.list(action="result.correction")
    assert opened.detail["cause"] == "patient_changed"
    assert opened.detail["results"] == [result_id]
    assert opened.actor != "radbridge"  # the HIS that sent the merge
    assert len(audit.list(action="result.corrected")) == 2
    [correction] = CorrectionStore(engine).for_study(scene.study_uid)
    assert correction.cause is CorrectionCause.PATIENT_CHANGED


def test_rejection_and_cancelled_order_withdraw_once(engine: Engine, tmp_path: Path) -> None:
    """A rejection note for the study's series cancels the job not sent yet that would send
    it (audited) and withdraws the written result: the RIS gets an ORU
    with the configured withdrawal status (D here), the FHIR server entered-in-error; the
    order cancelled afterwards finds the result withdrawn already and adds nothing; a
    rejection of a series no job sent corrects nothing."""
    with Ris() as ris, FhirReceiver() as emr:
        scene, stage, _ = written(engine, tmp_path, ris, emr, withdraw_status="D")
        corrections = CorrectionStore(engine)
        other = RejectionNote(scene.study_uid, "1.2.3.9", REJECTED_FOR_PATIENT_SAFETY, {})
        assert corrections.record_rejection(other, source="CT01") == []
        series = StudyStore(engine).get_study(scene.study_uid).series[0].series_uid
        note = RejectionNote(
            scene.study_uid, "1.2.3.10", REJECTED_FOR_PATIENT_SAFETY, {series: ["1.2.3.11"]}
        )
        unsent = JobStore(engine).create(scene.study_uid, "lungai", route="head-ct").job
        made = corrections.record_rejection(note, source="C-STORE from CT01")
        assert sorted(d.target for d in made) == ["emr", "ris"]
        assert JobStore(engine).get(unsent.id).state is JobState.CANCELLED
        [cancel] = AuditLog(engine).list(action="job.cancel")
        assert (cancel.actor, cancel.target) == ("C-STORE from CT01", f"job:{unsent.id}")
        assert drain(stage, "ris") == [DeliveryState.DONE]
        assert drain(stage, "emr") == [DeliveryState.DONE]
        outcome = OrderStore(engine).record_order(
            Order(
                source=OrderSource.HL7,
                placer_number="PL-1",
                filler_number="FL-1",
                accession_number=scene.accession,
                patient=Patient(patient_id="PAT0002"),
                status=OrderStatus.CANCELLED,
            ),
            InboundMessage(source=OrderSource.HL7, kind="ORM^O01", raw=b"MSH|^~\\&|RIS"),
        )
        assert outcome.stored.order.status is OrderStatus.CANCELLED
        assert outcome.linked == (scene.study_uid,)
        pending = DeliveryStore(engine).list(
            kind=DeliveryKind.CORRECTION, state=DeliveryState.PENDING
        )
        assert pending == []
    assert statuses(ris.messages()[1]) == ("D", {"D"})
    assert "Patient Safety" in str(ris.messages()[1].segments("NTE"))
    report = emr.created[emr.bundles[0]["entry"][0]["request"]["ifNoneExist"]]
    assert report["status"] == "entered-in-error"
    audit = AuditLog(engine).list(action="result.correction")
    assert [a.detail["cause"] for a in audit] == ["rejected", "rejected"]  # the note, and other


@pytest.mark.parametrize("kind", DATABASES)
def test_result_of_rejected_images_arriving_later_is_not_written(kind: str, tmp_path: Path) -> None:
    """A rejection note for the series a job sent, before the vendor answered: the result is
    kept when it comes but written nowhere (the job is done); a job made after the note is
    written back as usual. On SQLite and PostgreSQL."""
    with empty_database(kind, tmp_path) as engine:
        later_job_written(engine, tmp_path)


def later_job_written(engine: Engine, tmp_path: Path) -> None:
    scene = Scene.make(engine, tmp_path)
    job = scene.job()
    series = StudyStore(engine).get_study(scene.study_uid).series[0].series_uid
    note = RejectionNote(scene.study_uid, "1.2.3.10", REJECTED_FOR_PATIENT_SAFETY, {series: ["1"]})
    assert CorrectionStore(engine).record_rejection(note, source="C-STORE from PACS") == []
    stage = make_stage(
        engine, {"ris": ("hl7", {"host": LOOPBACK, "port": 9})}, routes={"head-ct": ("ris",)}
    )
    assert stage.schedule(scene.result(job, sr=False)) == []
    assert JobStore(engine).get(job.id).state is JobState.DONE
    later = scene.job(vendor="ichai2")
    made = stage.schedule(scene.result(later, sr=False))
    assert [d.target for d in made] == ["ris"]


@pytest.mark.parametrize("kind", DATABASES)
def test_adt_update_corrects_only_when_the_patient_changes(kind: str, tmp_path: Path) -> None:
    """An ADT^A08 that repeats the study's patient as held corrects nothing; one that renames
    the patient after the result was scheduled for the RIS makes one correction for it
    (patient_changed), audited with the HIS as actor. On SQLite and PostgreSQL."""
    with empty_database(kind, tmp_path) as engine:
        scene = Scene.make(engine, tmp_path)
        result_id = scene.result(scene.job(), sr=False)
        stage = make_stage(
            engine, {"ris": ("hl7", {"host": LOOPBACK, "port": 9})}, routes={"head-ct": ("ris",)}
        )
        assert [d.target for d in stage.schedule(result_id)] == ["ris"]
        orders = OrderStore(engine)
        orders.record_patient(Patient(patient_id="PAT0002", name="ROE^RICHARD"), adt("ADT^A08"))
        assert DeliveryStore(engine).list(kind=DeliveryKind.CORRECTION) == []
        orders.record_patient(Patient(patient_id="PAT0002", name="ROE^RICHARDSON"), adt("ADT^A08"))
        [made] = DeliveryStore(engine).list(kind=DeliveryKind.CORRECTION)
        assert (made.target, made.event, made.result_id) == ("ris", "patient_changed", result_id)
        [audited] = AuditLog(engine).list(action="result.correction")
        assert audited.detail["source"] == "ADT^A08 ADT^A08-1"
