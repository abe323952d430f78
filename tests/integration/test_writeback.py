"""Write-back: deliveries in the store, targets against real peers (Orthanc, an MLLP RIS,
a FHIR receiver, a webhook), retries, dead and operator retry, urgent first, overdue jobs."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
import yaml
from hl7apy.parser import parse_message  # type: ignore[import-untyped]
from sqlalchemy import Engine

from adapters.hl7.oru import build_oru
from broker.engine.plan import FixedPlan, FixedPlans
from broker.engine.writeback_stage import WritebackStage
from broker.model.errors import ConfigError
from broker.model.jobs import JobState
from broker.model.target import TARGETS
from broker.model.verdicts import VerdictLinks
from broker.model.writeback import (
    WEBHOOK_TARGET,
    DeliveryKind,
    DeliveryState,
    TargetSpec,
)
from broker.runtime.snapshot import build_targets
from broker.store.audit import AuditLog
from broker.store.deliveries import DeliveryStore, NewDelivery
from broker.store.jobs import JobStore
from broker.store.results import ResultStore
from broker.store.retention import PURGE, Cutoffs, Retention
from config.schema import Settings
from tests import cli_fork
from tests.databases import DATABASES, empty_database
from tests.fhir_receiver import FhirReceiver, Webhook
from tests.peers import LOOPBACK, Orthanc, ensure_cjk_font, part10_dataset, wait_until
from tests.ris import Ris
from tests.writeback_data import BLEED, MIDLINE, Scene

RADBRIDGE = str(Path(sys.executable).parent / "radbridge")
ROUTES = {"head-ct": ("pacs", "ris"), "bare": ()}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with empty_database("sqlite", tmp_path) as eng:
        yield eng


@pytest.fixture
def scene(engine: Engine, tmp_path: Path) -> Scene:
    return Scene.make(engine, tmp_path)


def make_stage(
    engine: Engine,
    targets: dict[str, tuple[str, dict[str, Any]]],
    *,
    routes: dict[str, tuple[str, ...]] | None = None,
    retries: int = 3,
    ris_status: str | None = None,
    rendered: Path | None = None,
) -> WritebackStage:
    """A stage whose retries wait no time (backoff 0), so a test drives them with run_once."""
    specs = {
        name: TargetSpec(name, kind, params, max_attempts=retries, backoff_base=0, backoff_cap=0)
        for name, (kind, params) in targets.items()
    }
    plan = FixedPlan(
        targets=specs, writers=build_targets(specs), routes=routes or ROUTES, ris_status=ris_status
    )
    return WritebackStage(
        engine,
        FixedPlans(plan),
        results=ResultStore(engine).get,
        jitter=lambda _a, _b: 0.0,
        rendered=rendered,
    )


def drain(stage: WritebackStage, target: str, limit: int = 10) -> list[DeliveryState]:
    """Run ``target``'s due deliveries until none is due; the outcome of each attempt."""
    outcomes = []
    for _ in range(limit):
        done = stage.run_once(target)
        if done is None:
            break
        outcomes.append(done.state)
    return outcomes


def orthanc_instances(orthanc: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    found = orthanc.request(
        "POST",
        "/tools/find",
        b'{"Level": "Instance", "Expand": true, "Query": {"StudyInstanceUID": "%s"}}'
        % study_uid.encode(),
    )
    return list(found)


# ----------------------------------------------------------------- configuration


def test_targets_are_validated_with_did_you_mean() -> None:
    """An unknown target type, a route naming an unknown target and a ris_status naming a
    non-hl7 target fail at load with the closest valid name."""
    base: dict[str, Any] = {
        "vendors": {
            "ichai": {
                "product": "ICH",
                "transport": {"type": "dicom", "ae_title": "I", "host": "h", "port": 1},
            }
        },
        "targets": {"pacs": {"type": "dicom", "ae_title": "PACS", "host": "h", "port": 104}},
    }
    bad_type = {**base, "targets": {"web": {"type": "dicomweb2", "url": "http://x"}}}
    with pytest.raises(ValueError, match="no such write-back target 'dicomweb2'; did you mean"):
        Settings.model_validate(bad_type)
    route = {"name": "r", "when": {"modality": "CT"}, "send": ["ichai"], "write_back": ["pacz"]}
    with pytest.raises(ValueError, match="unknown write-back target 'pacz'; did you mean 'pacs'"):
        Settings.model_validate({**base, "routes": [route]})
    status = {**base, "notifications": {"ris_status": {"target": "pacs"}}}
    with pytest.raises(ValueError, match="'pacs' is not an hl7 target"):
        Settings.model_validate(status)
    with pytest.raises(ConfigError, match="no such write-back target 'hl8'; did you mean 'hl7'"):
        TARGETS.get("hl8")


# ----------------------------------------------------------------- the store


@pytest.mark.parametrize("kind", DATABASES)
def test_store_claims_urgent_first_and_is_idempotent(kind: str, tmp_path: Path) -> None:
    """Deliveries are made once per result, target and kind; claims take urgent ones first,
    then the oldest; an interrupted one fails (due at once), is requeued by the timer's step
    before it is claimed again, and keeps its message id."""
    with empty_database(kind, tmp_path) as eng:
        store = DeliveryStore(eng)

        def new(result_id: int, urgent: bool) -> NewDelivery:
            return NewDelivery(
                "1.2", "ris", "hl7", DeliveryKind.RESULT, 3, result_id, None, urgent=urgent
            )

        first = store.create([new(1, False), new(2, True)])
        again = store.create([new(1, False)])
        assert again[0].id == first[0].id and again[0].message_id == first[0].message_id
        claimed = store.claim_next("ris")
        assert claimed is not None and claimed.result_id == 2 and claimed.attempts == 1
        assert [d.state for d in store.recover_interrupted()] == [DeliveryState.FAILED]
        assert store.claim_next("ris") is not None  # the other one: a failed one waits
        assert [d.result_id for d in store.requeue_due()] == [2]
        retried = store.claim_next("ris")
        assert retried is not None and retried.result_id == 2 and retried.attempts == 2
        assert retried.message_id == first[1].message_id
        assert [e.to_state.value for e in store.history(retried.id)] == [
            "pending",
            "sending",
            "failed",
            "pending",
            "sending",
        ]


# ----------------------------------------------------------------- PACS: Orthanc


def test_pacs_down_then_up_gets_the_sr_under_its_study(engine: Engine, scene: Scene) -> None:
    """C-STORE to a PACS that is down fails and retries; once Orthanc is up the SR arrives
    under the study's UID, and the job (route with no other target) is done."""
    orthanc = Orthanc()  # ports chosen, not started yet: the PACS is down
    try:
        stage = make_stage(
            engine,
            {
                "pacs": (
                    "dicom",
                    {
                        "ae_title": "ORTHANC",
                        "host": LOOPBACK,
                        "port": orthanc.dicom_port,
                        "timeout": 5,
                    },
                )
            },
            routes={"head-ct": ("pacs",)},
        )
        job = scene.job()
        made = stage.schedule(scene.result(job))
        assert [d.target for d in made] == ["pacs"]
        assert JobStore(engine).get(job.id).state is JobState.WRITING_BACK
        assert drain(stage, "pacs", limit=1) == [DeliveryState.FAILED]
        orthanc.start()
        assert drain(stage, "pacs") == [DeliveryState.DONE]
        (stored,) = orthanc_instances(orthanc, scene.study_uid)
        tags = orthanc.get(f"/instances/{stored['ID']}/simplified-tags")
        assert tags["Modality"] == "SR" and tags["StudyInstanceUID"] == scene.study_uid
        result = ResultStore(engine).get(made[0].result_id or 0)
        assert tags["SOPInstanceUID"] == result.objects[0].sop_instance_uid
        assert JobStore(engine).get(job.id).state is JobState.DONE
    finally:
        orthanc.stop()


def test_renderings_are_made_once_and_a_retry_stores_the_same_files(
    engine: Engine, scene: Scene
) -> None:
    """A target with ``render: [sc_summary, kos, pdf]`` that is down at the first attempt:
    the renderings are made then, once, into the result's spool folder; the retry once
    Orthanc is up sends those same files (not made again), so Orthanc holds one copy of
    each rendered instance, its data set byte for byte what was kept. Retention past
    ``results_after_written_back`` removes the folder with the result, audited."""
    ensure_cjk_font()
    orthanc = Orthanc()  # ports chosen, not started yet: the PACS is down
    try:
        stage = make_stage(
            engine,
            {
                "pacs": (
                    "dicom",
                    {
                        "ae_title": "ORTHANC",
                        "host": LOOPBACK,
                        "port": orthanc.dicom_port,
                        "timeout": 5,
                        "render": ["sc_summary", "kos", "pdf"],
                        "originals": False,
                        "language": "en",
                    },
                )
            },
            routes={"head-ct": ("pacs",)},
            rendered=scene.spool.rendered,
        )
        [made] = stage.schedule(scene.result(scene.job()))
        assert drain(stage, "pacs", limit=1) == [DeliveryState.FAILED]
        [kept] = (scene.spool.rendered / str(made.result_id)).iterdir()
        first = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept.glob("*.dcm")}
        assert len(first) >= 2  # a summary page (or more) and the PDF (the SR names no key image)
        orthanc.start()
        assert drain(stage, "pacs") == [DeliveryState.DONE]
        again = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept.glob("*.dcm")}
        assert again == first  # not made again
        stored = orthanc_instances(orthanc, scene.study_uid)
        assert sorted(f"{i['MainDicomTags']['SOPInstanceUID']}.dcm" for i in stored) == sorted(
            first
        )
        for instance in stored:  # the data set as sent (Orthanc writes its own file meta)
            held = orthanc.request("GET", f"/instances/{instance['ID']}/file")
            sent = first[f"{instance['MainDicomTags']['SOPInstanceUID']}.dcm"][1]
            assert part10_dataset(held) == part10_dataset(sent)

        retention = Retention(engine, scene.spool)
        gone = retention.purge(Cutoffs(results=datetime.now(UTC) + timedelta(seconds=1)))
        assert [i.kind for i in gone.items if i.kind == "renderings"] == ["renderings"]
        assert not (scene.spool.rendered / str(made.result_id)).exists()
        trail = AuditLog(engine).list(action=PURGE)
        assert f"renderings:result-{made.result_id}" in {a.target for a in trail}
    finally:
        orthanc.stop()


def test_stow_rs_to_orthanc(engine: Engine, scene: Scene) -> None:
    """The dicomweb target STOWs the result's SR into Orthanc's DICOMweb plugin."""
    with Orthanc(dicomweb=True) as orthanc:
        stage = make_stage(
            engine,
            {"web": ("dicomweb", {"url": orthanc.dicomweb_url})},
            routes={"head-ct": ("web",)},
        )
        stage.schedule(scene.result(scene.job()))
        assert drain(stage, "web") == [DeliveryState.DONE]
        (stored,) = orthanc_instances(orthanc, scene.study_uid)
        assert stored["MainDicomTags"]["SOPInstanceUID"]


# ----------------------------------------------------------------- RIS: MLLP


def test_ris_ae_then_aa_gets_the_same_oru(engine: Engine, scene: Scene) -> None:
    """The RIS answers AE, then AA: the retry carries the same control ID; the ORU has the
    accession in OBR-18, P in OBR-25, an OBX per finding with OBX-11 P, and the UIDs."""
    scene.order()
    with Ris(["AE", "AA"]) as ris:
        stage = make_stage(
            engine,
            {
                "ris": (
                    "hl7",
                    {
                        "host": LOOPBACK,
                        "port": ris.port,
                        "timeout": 5,
                        "receiving_application": "RIS",
                    },
                )
            },
            routes={"head-ct": ("ris",)},
        )
        job = scene.job()
        result_id = scene.result(job)
        stage.schedule(result_id)
        assert drain(stage, "ris") == [DeliveryState.FAILED, DeliveryState.DONE]
    first, second = ris.messages()
    assert str(first) == str(second)
    assert str(first.segment("MSH")[10]) == DeliveryStore(engine).list()[0].message_id
    obr = first.segment("OBR")
    assert (str(obr[2]), str(obr[3]), str(obr[18]), str(obr[25])) == (
        "PL-1",
        "FL-1",
        scene.accession,
        "P",
    )
    assert str(obr[4]) == "CTHEAD^CT head without contrast^L"
    assert str(first.segment("PID")[3]) == "PAT0002"
    obx = list(first.segments("OBX"))
    coded = [o for o in obx if str(o[2]) == "CWE"]
    assert [str(o[3][0][0]) for o in coded] == [BLEED.value, MIDLINE.value]
    assert [str(o[8]) for o in coded] == ["A", "N"]
    assert [str(o[9]) for o in coded] == ["0.97", "0.08"]
    assert {str(o[11]) for o in obx} == {"P"}
    result = ResultStore(engine).get(result_id)
    uids = {str(o[5]) for o in obx if str(o[2]) == "ST"}
    sr = result.objects[0]
    assert uids == {scene.study_uid, sr.series_uid, sr.sop_instance_uid}
    note = first.segments("NTE")[1]
    assert first.unescape(str(note[3])) == "Hyperdense area | right parietal"
    assert JobStore(engine).get(job.id).state is JobState.DONE


def test_oru_is_a_valid_oru_r01_for_hl7apy(engine: Engine, scene: Scene) -> None:
    """hl7apy parses the ORU with its ORU_R01 structure; separators in text are escaped."""
    job = scene.job()
    result = ResultStore(engine).get(scene.result(job))
    text = build_oru(control_id="RB1", result=result, order=None, study=None)
    parsed = parse_message(text, find_groups=True, validation_level=2)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert "Bleed suspected\\S\\check" in text
    assert "Hyperdense area \\F\\ right parietal" in text


def test_ris_never_answering_is_dead_then_operator_retry(
    engine: Engine, scene: Scene, tmp_path: Path
) -> None:
    """A RIS that never ACKs: each attempt times out, the delivery ends dead and the job
    dead with the reason; `radbridge deliveries retry` starts it over and the job ends done."""
    with Ris(default=None) as ris:
        stage = make_stage(
            engine,
            {"ris": ("hl7", {"host": LOOPBACK, "port": ris.port, "timeout": 0.3})},
            retries=2,
            routes={"head-ct": ("ris",)},
        )
        job = scene.job()
        stage.schedule(scene.result(job))
        assert drain(stage, "ris") == [DeliveryState.FAILED, DeliveryState.DEAD]
        dead = JobStore(engine).get(job.id)
        assert dead.state is JobState.DEAD
        assert dead.last_error and "write-back dead: ris:" in dead.last_error
        (delivery,) = DeliveryStore(engine).list()
        config = tmp_path / "rb.yaml"
        config.write_text(
            yaml.safe_dump(
                {"storage": {"database": str(engine.url), "spool": str(tmp_path / "spool")}}
            )
        )
        listed = cli_fork.run(
            ["deliveries", "list", "-c", str(config), "--state", "dead", "--json"],
            check=True,
        )
        assert '"state": "dead"' in listed.stdout
        retried = cli_fork.run(
            ["deliveries", "retry", str(delivery.id), "-c", str(config)],
            check=True,
        )
        assert f"delivery {delivery.id} is pending" in retried.stdout
        assert JobStore(engine).get(job.id).state is JobState.WRITING_BACK
        ris.default = "AA"
        assert drain(stage, "ris") == [DeliveryState.DONE]
    assert len({hl7.parse(m).segment("MSH")[10][0] for m in ris.received}) == 1
    assert JobStore(engine).get(job.id).state is JobState.DONE


# ----------------------------------------------------------------- EMR: FHIR


def test_fhir_diagnostic_report_validated_by_the_receiver(engine: Engine, scene: Scene) -> None:
    """A FHIR server that is unavailable once, then takes the transaction: the Bundle is valid
    R4, the report preliminary and based on the order, one Observation per finding, the
    ImagingStudy by urn:oid, and the retry is the same bundle (conditional creates)."""
    scene.order()
    with FhirReceiver(status=[503]) as emr:
        stage = make_stage(
            engine, {"emr": ("fhir", {"url": emr.url})}, routes={"head-ct": ("emr",)}
        )
        stage.schedule(scene.result(scene.job()))
        assert drain(stage, "emr") == [DeliveryState.FAILED, DeliveryState.DONE]
    assert emr.requests == 2
    (bundle,) = emr.bundles
    resources = [e["resource"] for e in bundle["entry"]]
    report, observations = resources[0], resources[1:]
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["basedOn"][0]["identifier"]["value"] == "PL-1"
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{scene.study_uid}"
    assert [o["code"]["coding"][0]["code"] for o in observations] == [BLEED.value, MIDLINE.value]
    assert {o["status"] for o in observations} == {"preliminary"}
    assert len(report["result"]) == 2


# ----------------------------------------------------------------- urgent, overdue


def test_urgent_result_jumps_the_queue_and_notifies(engine: Engine, tmp_path: Path) -> None:
    """Of two results waiting for the RIS, the urgent one goes first; it also triggers the
    webhook (no patient data) and an ORM^O01 status update (ORC-1 SC, priority S)."""
    routine, urgent = Scene.make(engine, tmp_path, "1"), Scene.make(engine, tmp_path, "2")
    with Ris() as ris, Webhook() as hook:
        stage = make_stage(
            engine,
            {
                "ris": ("hl7", {"host": LOOPBACK, "port": ris.port, "timeout": 5}),
                WEBHOOK_TARGET: ("webhook", {"url": hook.url}),
            },
            routes={"head-ct": ("ris",)},
            ris_status="ris",
        )
        stage.schedule(routine.result(routine.job()))
        stage.schedule(urgent.result(urgent.job(), urgent=True))
        assert drain(stage, "ris") == [DeliveryState.DONE] * 3
        assert drain(stage, WEBHOOK_TARGET) == [DeliveryState.DONE]
    kinds = [(str(m.segment("MSH")[9]), str(m.segment("OBR")[18])) for m in ris.messages()]
    assert kinds == [
        ("ORU^R01^ORU_R01", urgent.accession),
        ("ORM^O01^ORM_O01", urgent.accession),
        ("ORU^R01^ORU_R01", routine.accession),
    ]
    orc = ris.messages()[1].segment("ORC")
    assert (str(orc[1]), str(orc[7][0][5])) == ("SC", "S")
    urgent_oru = ris.messages()[0]
    assert str(urgent_oru.segments("OBX")[0][8]) == "AA"
    ((headers, body),) = hook.received
    assert body["event"] == "urgent_result" and body["study_uid"] == urgent.study_uid
    assert body["findings"][0]["urgent"] is True and "ROE" not in str(body)
    assert headers["Idempotency-Key"] == body["id"]


def test_webhook_retry_after_a_timeout_is_one_notification(engine: Engine, scene: Scene) -> None:
    """A receiver slower than the webhook's timeout: every retry carries the first attempt's
    Idempotency-Key and body byte for byte (verdict links included); the receiver, honouring
    the key, answers 409 while it processes the first and its first answer after; it keeps
    one notification and the delivery ends done."""
    with Webhook(delays=[1.0]) as hook:
        params = {"url": hook.url, "timeout": 0.3}
        spec = TargetSpec(
            WEBHOOK_TARGET, "webhook", params, max_attempts=20, backoff_base=0.1, backoff_cap=0.2
        )
        plan = FixedPlan(
            targets={WEBHOOK_TARGET: spec},
            writers=build_targets({WEBHOOK_TARGET: spec}),
            routes={"head-ct": ()},
            verdict_links=VerdictLinks("s" * 32, "https://radbridge.example"),
        )
        stage = WritebackStage(
            engine, FixedPlans(plan), results=ResultStore(engine).get, jitter=lambda _a, b: b
        )
        stage.schedule(scene.result(scene.job(), urgent=True))

        def done() -> bool:
            attempt = stage.run_once(WEBHOOK_TARGET)
            return attempt is not None and attempt.state is DeliveryState.DONE

        wait_until(done, "the notification done", timeout=30, interval=0.05)
    [(headers, body)] = hook.received
    assert body["event"] == "urgent_result" and body["findings"][0]["verdict_links"]
    keys = {key for key, _body, _code in hook.attempts}
    assert keys == {headers["Idempotency-Key"]} and len(hook.attempts) >= 2
    assert len({sent for _key, sent, _code in hook.attempts}) == 1
    assert [code for *_, code in hook.attempts][-1] == 204


def test_route_without_write_back_is_done_at_once(engine: Engine, scene: Scene) -> None:
    """A route that writes back nowhere: the job goes result_received → writing_back → done."""
    stage = make_stage(engine, {})
    job = scene.job(route="bare")
    assert stage.schedule(scene.result(job, sr=False)) == []
    assert JobStore(engine).get(job.id).state is JobState.DONE


def test_overdue_jobs_are_listed_and_notified_once(
    engine: Engine, scene: Scene, tmp_path: Path
) -> None:
    """A job with no result past its deadline is in `jobs list --state overdue`; the watcher
    flags it once and the webhook hears of it once."""
    late = scene.job(deadline=timedelta(seconds=-1))
    other = Scene.make(engine, tmp_path, "b").job(deadline=timedelta(hours=1))
    config = tmp_path / "rb.yaml"
    config.write_text(
        yaml.safe_dump({"storage": {"database": str(engine.url), "spool": str(tmp_path / "spool")}})
    )
    listed = cli_fork.run(
        ["jobs", "list", "-c", str(config), "--state", "overdue", "--json"],
        check=True,
    )
    assert [j["id"] for j in yaml.safe_load(listed.stdout)] == [late.id]
    assert other.id != late.id
    with Webhook() as hook:
        stage = make_stage(engine, {WEBHOOK_TARGET: ("webhook", {"url": hook.url})})
        assert [j.id for j in stage.check_overdue()] == [late.id]
        assert stage.check_overdue() == []
        assert drain(stage, WEBHOOK_TARGET) == [DeliveryState.DONE]
    ((_, body),) = hook.received
    assert (body["event"], body["job_id"], body["state"]) == ("overdue", late.id, "awaiting_result")


def test_jobs_and_deliveries_are_listed_newest_first_a_page_at_a_time(
    engine: Engine, scene: Scene, tmp_path: Path
) -> None:
    """`jobs list` and `deliveries list` show the newest first (they once showed the oldest
    200), `--limit` makes a page, `--before ID` the next (older) one, and the table says how
    to get it."""
    scenes = [scene, Scene.make(engine, tmp_path, "b"), Scene.make(engine, tmp_path, "c")]
    made = [s.job() for s in scenes]
    stage = make_stage(engine, {"ris": ("hl7", {"host": LOOPBACK, "port": 9})})
    for each, job in zip(scenes, made, strict=True):
        stage.schedule(each.result(job))
    config = tmp_path / "rb.yaml"
    config.write_text(
        yaml.safe_dump({"storage": {"database": str(engine.url), "spool": str(tmp_path / "spool")}})
    )

    def ids(*args: str) -> list[int]:
        listed = cli_fork.run([*args, "-c", str(config), "--json"])
        return [item["id"] for item in yaml.safe_load(listed.stdout)]

    newest = sorted((j.id for j in made), reverse=True)
    assert ids("jobs", "list", "--limit", "2") == newest[:2]
    assert ids("jobs", "list", "--limit", "2", "--before", str(newest[1])) == newest[2:]
    deliveries = sorted((d.id for d in DeliveryStore(engine).list()), reverse=True)
    assert len(deliveries) == 3
    assert ids("deliveries", "list", "--limit", "2") == deliveries[:2]
    assert ids("deliveries", "list", "--before", str(deliveries[1])) == deliveries[2:]
    table = cli_fork.run(["jobs", "list", "--limit", "2", "-c", str(config)])
    assert f"older ones: --before {newest[1]}" in table.stderr


# ----------------------------------------------------------------- kill -9

CHILD = """
import sys
from broker.store import make_engine
from broker.store.audit import AuditLog
from broker.store.results import ResultStore
from broker.store.retention import PURGE, Cutoffs, Retention
from broker.model.writeback import TargetSpec
from broker.engine.plan import FixedPlan, FixedPlans
from broker.engine.writeback_stage import WritebackStage
from broker.runtime.snapshot import build_targets

engine = make_engine(sys.argv[1])
specs = {"ris": TargetSpec("ris", "hl7", {"host": "127.0.0.1", "port": int(sys.argv[2]),
         "timeout": 60}, max_attempts=3, backoff_base=0, backoff_cap=0)}
plan = FixedPlan(targets=specs, writers=build_targets(specs), routes={"head-ct": ("ris",)})
stage = WritebackStage(engine, FixedPlans(plan), results=ResultStore(engine).get)
for result_id in ResultStore(engine).awaiting_write_back():  # what the results timer does
    stage.schedule(result_id)
stage.run_once("ris")  # blocks: this RIS does not answer
"""


def test_kill_9_during_write_back_resends_the_same_message(engine: Engine, scene: Scene) -> None:
    """A result complete but not yet written back survives kill -9: announced again, its
    delivery is made once; killed mid-send, it is retried after the restart with the same
    control ID, and the job ends done."""
    job = scene.job()
    result_id = scene.result(job)  # complete; the process "stopped" before scheduling
    assert ResultStore(engine).awaiting_write_back() == [result_id]
    with Ris(default=None) as ris:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(engine.url), str(ris.port)])
        try:
            deadline = time.monotonic() + 120  # its imports alone take seconds on a busy machine
            while not ris.received and time.monotonic() < deadline:
                child.poll()
                assert child.returncode is None, "the child stopped early"
                time.sleep(0.05)
            assert ris.received, "the child never sent the ORU"
        finally:
            child.kill()  # SIGKILL: no cleanup
            child.wait(10)
        (delivery,) = DeliveryStore(engine).list()
        assert delivery.state is DeliveryState.SENDING
        ris.default = "AA"
        stage = make_stage(engine, {"ris": ("hl7", {"host": LOOPBACK, "port": ris.port})})
        stage.recover()
        for again in ResultStore(engine).awaiting_write_back():
            stage.schedule(again)
        assert drain(stage, "ris") == [DeliveryState.DONE]
    first, second = ris.received
    assert first == second
    assert len(DeliveryStore(engine).list()) == 1
    assert JobStore(engine).get(job.id).state is JobState.DONE
