"""Write-back is audited and measured: a delivery done appends one ``result.written`` row in
its own transaction and a write-back latency sample; an operator's retry from the command
line is audited. Against real peers (an MLLP RIS, Orthanc)."""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
import yaml
from sqlalchemy import Engine

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from adapters.web.app import create_app
from broker.engine.metrics import REGISTRY
from broker.model.domain import Role
from broker.model.writeback import DeliveryState
from broker.store.api_tokens import ApiTokens
from broker.store.audit import SYSTEM, Action, AuditEntry, AuditLog
from broker.store.deliveries import DeliveryStore
from broker.store.results import ResultStore
from tests.databases import DATABASES, empty_database
from tests.integration.test_writeback import RADBRIDGE, drain, make_stage, orthanc_instances
from tests.peers import LOOPBACK, Orthanc
from tests.ris import Ris
from tests.writeback_data import Scene

LATENCY = "radbridge_writeback_latency_seconds_count"


@pytest.fixture(params=DATABASES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with empty_database(request.param, tmp_path) as eng:
        yield eng


def written(engine: Engine) -> list[AuditEntry]:
    """The ``result.written`` rows of the audit trail, newest first."""
    return AuditLog(engine).list(action=Action.RESULT_WRITTEN)


def samples(target: str) -> float:
    """How many write-back latencies this process observed for ``target``."""
    return REGISTRY.get_sample_value(LATENCY, {"target": target}) or 0.0


def test_ris_done_is_audited_once_and_measured(engine: Engine, tmp_path: Path) -> None:
    """The RIS answers AE then AA: the failed attempt writes no audit row; the done one
    exactly one (actor radbridge, target delivery:ID, the ORU's control ID); settling again
    adds none; one latency sample is observed and /metrics shows it."""
    scene = Scene.make(engine, tmp_path)
    with Ris(["AE", "AA"]) as ris:
        stage = make_stage(
            engine,
            {"ris-audit": ("hl7", {"host": LOOPBACK, "port": ris.port, "timeout": 5})},
            routes={"head-ct": ("ris-audit",)},
        )
        before = samples("ris-audit")
        job = scene.job()
        result_id = scene.result(job)
        stage.schedule(result_id)
        assert drain(stage, "ris-audit", limit=1) == [DeliveryState.FAILED]
        assert written(engine) == []
        assert drain(stage, "ris-audit") == [DeliveryState.DONE]
    (delivery,) = DeliveryStore(engine).list()
    stage.settle(job.id)
    stage.recover()
    (row,) = written(engine)
    assert (row.actor, row.action, row.target) == (
        SYSTEM,
        "result.written",
        f"delivery:{delivery.id}",
    )
    control_id = str(hl7.parse(ris.received[-1]).segment("MSH")[10])
    assert row.detail == {
        "result_id": result_id,
        "job_id": job.id,
        "study_uid": scene.study_uid,
        "target": "ris-audit",
        "target_type": "hl7",
        "control_id": control_id,
        "outcome": delivery.detail,
    }
    assert control_id == delivery.message_id
    assert samples("ris-audit") == before + 1
    token = ApiTokens(engine).create(Role.VIEWER, "metrics")
    with TestClient(create_app(engine)) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert f'{LATENCY}{{target="ris-audit"}} {before + 1}' in text


def test_pacs_done_audit_names_the_sop_instance_uids(engine: Engine, tmp_path: Path) -> None:
    """A C-STORE to Orthanc that is done records the SOP Instance UIDs it stored (the SR
    Orthanc now holds) in its one result.written row."""
    scene = Scene.make(engine, tmp_path)
    with Orthanc() as orthanc:
        stage = make_stage(
            engine,
            {
                "pacs-audit": (
                    "dicom",
                    {"ae_title": "ORTHANC", "host": LOOPBACK, "port": orthanc.dicom_port},
                )
            },
            routes={"head-ct": ("pacs-audit",)},
        )
        result_id = scene.result(scene.job())
        stage.schedule(result_id)
        assert drain(stage, "pacs-audit") == [DeliveryState.DONE]
        (stored,) = orthanc_instances(orthanc, scene.study_uid)
    (row,) = written(engine)
    sr = ResultStore(engine).get(result_id).objects[0].sop_instance_uid
    assert row.detail["sop_instance_uids"] == [sr] == [stored["MainDicomTags"]["SOPInstanceUID"]]
    assert (row.detail["target_type"], row.detail["result_id"]) == ("dicom", result_id)
    assert "control_id" not in row.detail


def test_cli_retry_of_a_dead_delivery_is_audited(tmp_path: Path) -> None:
    """`radbridge deliveries retry` of a dead delivery appends a delivery.retry row by
    cli:USER (dead → pending, the target and the job)."""
    with empty_database("sqlite", tmp_path) as engine:
        scene = Scene.make(engine, tmp_path)
        with Ris(default=None) as ris:
            stage = make_stage(
                engine,
                {"ris": ("hl7", {"host": LOOPBACK, "port": ris.port, "timeout": 0.2})},
                retries=1,
                routes={"head-ct": ("ris",)},
            )
            stage.schedule(scene.result(scene.job()))
            assert drain(stage, "ris") == [DeliveryState.DEAD]
        (delivery,) = DeliveryStore(engine).list()
        config = tmp_path / "rb.yaml"
        config.write_text(
            yaml.safe_dump(
                {"storage": {"database": str(engine.url), "spool": str(tmp_path / "spool")}}
            )
        )
        command = [RADBRIDGE, "deliveries", "retry", str(delivery.id), "-c", str(config)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        assert f"delivery {delivery.id} is pending" in done.stdout
        (row,) = AuditLog(engine).list(action=Action.DELIVERY_RETRY)
        assert row.actor.startswith("cli:") and row.target == f"delivery:{delivery.id}"
        assert row.detail == {
            "from_state": "dead",
            "to_state": "pending",
            "target": "ris",
            "job_id": delivery.job_id,
        }
