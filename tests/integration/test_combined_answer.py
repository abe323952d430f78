"""A route's combined answer through the write-back stage on a real store, with the real
combined SR maker, an MLLP RIS and a FHIR receiver: it waits for the route's other
products (its urgent notification does not), and a product that gave up no longer holds
it back. Two products that disagree notify the webhook once, however their results
complete."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine

from broker.engine.plan import FixedPlan, FixedPlans
from broker.engine.writeback_stage import WritebackStage
from broker.model.jobs import JobState
from broker.model.writeback import WEBHOOK_TARGET, DeliveryKind, DeliveryState, TargetSpec
from broker.runtime.findings import Reconciliation
from broker.runtime.snapshot import build_targets
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.results import ResultStore
from config.schema import Settings
from tests.databases import empty_database
from tests.fhir_receiver import FhirReceiver
from tests.peers import LOOPBACK
from tests.ris import Ris
from tests.writeback_data import Scene, findings


def _vendor(product: str) -> dict[str, object]:
    return {
        "product": product,
        "transport": {"type": "dicom", "ae_title": "AI", "host": "127.0.0.1", "port": 104},
    }


def _settings(**reconcile: object) -> Settings:
    return Settings.model_validate(
        {
            "vendors": {"ichai": _vendor("ICH triage"), "other": _vendor("Head CT second")},
            "targets": {"ris": {"type": "hl7", "host": "127.0.0.1", "port": 9}},
            "routes": [
                {
                    "name": "head-ct",
                    "when": {"modality": "CT"},
                    "send": ["ichai", "other"],
                    "write_back": ["ris"],
                    **reconcile,
                }
            ],
        }
    )


SETTINGS = _settings(reconcile="combined", owners={"SCT:1386000": "ichai"})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with empty_database("sqlite", tmp_path) as eng:
        yield eng


def test_the_combined_answer_waits_then_goes_without_a_product_that_gave_up(
    engine: Engine, tmp_path: Path
) -> None:
    """The first product's urgent result: the webhook is told at once, nothing is written
    back, its job waits in result_received. Once the other product's job is dead the
    timer's task writes one ORU and one FHIR Bundle naming the first product's findings and
    their provenance, and the job is done; the combined SR is a Comprehensive SR under the
    study."""
    scene = Scene.make(engine, tmp_path)
    with Ris() as ris, FhirReceiver() as emr:
        specs = {
            "ris": TargetSpec("ris", "hl7", {"host": LOOPBACK, "port": ris.port, "timeout": 5}),
            "emr": TargetSpec("emr", "fhir", {"url": emr.url}),
            WEBHOOK_TARGET: TargetSpec(WEBHOOK_TARGET, "webhook", {"url": "http://127.0.0.1:9/"}),
        }
        plan = FixedPlan(
            targets=specs, writers=build_targets(specs), routes={"head-ct": ("ris", "emr")}
        )
        stage = WritebackStage(
            engine,
            FixedPlans(plan),
            results=ResultStore(engine).get,
            jitter=lambda _a, _b: 0.0,
            reconciler=Reconciliation(engine, lambda: SETTINGS, scene.spool),
        )
        jobs, deliveries = JobStore(engine), DeliveryStore(engine)
        first, other = scene.job("ichai"), scene.job("other")
        made = stage.schedule(scene.result(first, urgent=True, sr=False))
        assert [(d.target, d.kind) for d in made] == [(WEBHOOK_TARGET, DeliveryKind.NOTIFY)]
        assert jobs.get(first.id).state is JobState.RESULT_RECEIVED
        assert stage.combine_waiting() == 0  # still waiting for the other product

        jobs.finish(other.id, JobState.DEAD, error="vendor never answered")
        assert stage.combine_waiting() == 1
        combined = deliveries.for_job(first.id)
        assert {(d.target, d.event, d.kind) for d in combined} == {
            ("ris", "combined", DeliveryKind.RESULT),
            ("emr", "combined", DeliveryKind.RESULT),
        }
        assert stage.run_once("ris") is not None and stage.run_once("emr") is not None
        assert {deliveries.get(d.id).state for d in combined} == {DeliveryState.DONE}
        assert jobs.get(first.id).state is JobState.DONE
        assert stage.combine_waiting() == 0
        plan.close()
    [oru] = ris.messages()
    observations = [obx for obx in oru.segments("OBX") if str(obx[2]) == "CWE"]
    assert [str(obx[17]) for obx in observations] == ["^Acme AI ICH triage 2.1"] * 2
    notes = [str(seg[3]) for seg in oru if str(seg[0]) == "NTE"]
    assert any(n.startswith("ICH triage (ichai)") and "owner of this finding" in n for n in notes)
    (bundle,) = emr.bundles  # validated R4 by the receiver
    methods = [
        e["resource"]["method"]["text"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    ]
    assert len(methods) == 2 and all(m.startswith("ICH triage (ichai)") for m in methods)
    [sr_path] = list((scene.spool.root / "results").rglob("*.dcm"))
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.StudyInstanceUID == scene.study_uid


def test_two_disagreeing_results_completed_together_notify_the_webhook_once(
    engine: Engine, tmp_path: Path
) -> None:
    """Both products' results are complete before either is scheduled (two processes
    finishing at once): each sees the disagreement, and the webhook gets one ``flag``
    delivery, the newest result's, not one per result."""
    settings = _settings()  # separate answers
    scene = Scene.make(engine, tmp_path)
    specs = {WEBHOOK_TARGET: TargetSpec(WEBHOOK_TARGET, "webhook", {"url": "http://127.0.0.1:9/"})}
    plan = FixedPlan(targets=specs, writers=build_targets(specs), routes={"head-ct": ()})
    stage = WritebackStage(
        engine,
        FixedPlans(plan),
        results=ResultStore(engine).get,
        jitter=lambda _a, _b: 0.0,
        reconciler=Reconciliation(engine, lambda: settings, scene.spool),
    )
    said = findings(scene.study_uid)
    bleed_absent = replace(said, findings=(replace(said.findings[0], present=False, score=0.1),))
    first = scene.result(scene.job("ichai"))
    second = scene.result(scene.job("other"), found=bleed_absent)
    made = [d for rid in (first, second) for d in stage.schedule(rid)]
    flags = {d.id: d for d in made if d.kind is DeliveryKind.FLAG}
    assert [(d.result_id, d.event) for d in flags.values()] == [(second, "discordant")]
    plan.close()
