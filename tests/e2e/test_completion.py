"""Study completion from evidence, through ``radbridge serve``: expected series (storescu),
MPPS N-CREATE/N-SET and IAN N-CREATE (pynetdicom SCU; dcmtk has no MPPS or IAN SCU).

One service for the module, with a quiet time of two minutes: a study that completes
within the test completed on evidence, never on silence.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.uid import generate_uid

from adapters.dicom.synthetic import generate_study
from adapters.harness.mpps import (
    ProcedureStep,
    availability_dataset,
    notify_availability,
    references,
    step_dataset,
)
from broker.model.domain import Patient
from tests import cli_fork
from tests.hl7_messages import orm_o01, sample_order
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.ris import Ris
from tests.service import Radbridge, base_config

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("completion")]

QUIET = 120.0
PATIENT = Patient("PAT0001", None, "DOE^JANE", "19650412", "F")
"""The patient of ``generate_study``'s studies."""
DEADLINE = 3.0


def _config(folder: Path, vendor_port: int, ris_port: int) -> dict[str, Any]:
    config = base_config(folder, free_port(), study_stable_seconds=QUIET)
    config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["targets"] = {"ris": {"type": "hl7", "host": "127.0.0.1", "port": ris_port}}
    config["notifications"] = {"ris_status": {"target": "ris", "procedure_steps": True}}
    config["hl7"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["vendors"] = {
        "strokeai": {
            "product": "CT stroke",
            "transport": {
                "type": "dicom",
                "ae_title": "STROKEAI",
                "host": "127.0.0.1",
                "port": vendor_port,
            },
        },
        "dwiai": {
            "product": "MR stroke DWI",
            "transport": {"type": "dicom", "ae_title": "DWIAI", "host": "127.0.0.1", "port": 9},
        },
    }
    config["routes"] = [
        {
            "name": "stroke",
            "when": {"modality": "CT", "body_part": "HEAD"},
            "send": ["strokeai"],
            "priority": "stat",
            "expect": {
                "series": {
                    "ncct": {"description": {"regex": "head"}, "contrast_agent": {"exists": False}},
                    "cta": {"description": {"regex": "cta"}},
                    "perfusion": {"description": {"regex": "perfusion"}},
                },
                "deadline": DEADLINE,
                "on_timeout": "send_incomplete",
            },
        },
        {
            "name": "mr-dwi",
            "when": {"modality": "MR"},
            "send": ["dwiai"],
            "expect": {
                "series": {"dwi": {"description": {"regex": "dwi|diffusion"}}},
                "deadline": DEADLINE,
                "on_timeout": "skip",
            },
        },
    ]
    return config


@dataclass
class Service:
    rb: Radbridge
    vendor: StoreSCP
    ris: Ris
    folder: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One radbridge (quiet time 120 s), the stroke vendor's storescp, and a RIS (MLLP) that
    hears of procedure steps."""
    folder = tmp_path_factory.mktemp("completion")
    with StoreSCP(folder / "strokeai", ae_title="STROKEAI") as vendor, Ris() as ris:
        rb = Radbridge(folder / "rb", _config(folder / "rb", vendor.port, ris.port))
        rb.start()
        try:
            yield Service(rb, vendor, ris, folder)
        finally:
            rb.close()


def stroke_study(folder: Path, kinds: tuple[str, ...], accession: str) -> dict[str, list[Path]]:
    """One study of the given CT series (``ct_head``, ``ct_ccta``, ``ct_perfusion``), small."""
    study_uid = str(generate_uid())
    return {
        kind: generate_study(
            kind,  # type: ignore[arg-type]
            folder / kind,
            instances=2,
            rows=16,
            columns=16,
            study_uid=study_uid,
            accession=accession,
        )
        for kind in kinds
    }


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _completed(rb: Radbridge, study_uid: str) -> dict[str, Any]:
    study = rb.wait_state(study_uid, "stable", timeout=30)
    [complete] = [e for e in study["history"] if e["kind"] == "complete"]
    return {**study, "complete": complete}


@pytest.fixture(scope="module")
def stroke(service: Service) -> dict[str, Any]:
    """A whole stroke study (head CT, CTA, perfusion) sent with storescu, once it reached
    the vendor: its UID and files, and the study as ``studies show`` gives it then."""
    everything = generate_study(
        "ct_stroke", service.folder / "stroke", instances=2, rows=16, columns=16, accession="S1"
    )
    storescu(everything, service.rb.port)
    study_uid = _uid(everything[0])
    study = _completed(service.rb, study_uid)
    wait_until(lambda: len(service.vendor.files()) >= len(everything), "vendor has the study")
    return {"study_uid": study_uid, "files": everything, "study": study}


def test_stroke_study_completes_when_its_expected_series_are_in(stroke: dict[str, Any]) -> None:
    """Head CT, CTA and perfusion sent: the study is complete at once (not after its
    120 s quiet time), by expected series, and the vendor gets all of it (the fixture
    waits for that)."""
    complete = stroke["study"]["complete"]
    assert complete["reason"] == "expected_series"
    assert "route stroke: all of" in complete["detail"]
    assert all(name in complete["detail"] for name in ("ncct", "cta", "perfusion"))


def _token(rb: Radbridge) -> str:
    return rb.cli("tokens", "create", "--role", "viewer", "--name", "ledger").stdout.strip()


def test_timeline_via_cli_and_api(service: Service, stroke: dict[str, Any]) -> None:
    """The stroke study's ledger, by ``studies timeline`` (JSON, CSV) and the API (JSON,
    CSV): instances, complete by expected series, routed and sent to the vendor, in time
    order; the turnaround report counts its job under the route."""
    rb, study_uid = service.rb, stroke["study_uid"]
    wait_until(
        lambda: '"sent"' in rb.cli("studies", "timeline", study_uid, "--json").stdout,
        "sent stamped",
    )
    ledger = json.loads(rb.cli("studies", "timeline", study_uid, "--json").stdout)
    kinds = [s["kind"] for s in ledger["stamps"]]
    for kind in ("first_instance", "last_instance", "complete", "routed", "sent"):
        assert kind in kinds
    assert kinds.index("first_instance") < kinds.index("complete") < kinds.index("routed")
    assert kinds.index("routed") < kinds.index("sent")
    times = [s["at"] for s in ledger["stamps"]]
    assert times == sorted(times)
    [complete] = [s for s in ledger["stamps"] if s["kind"] == "complete"]
    assert complete["reason"] == "expected_series"
    [sent] = [s for s in ledger["stamps"] if s["kind"] == "sent"]
    assert sent["subject"] == "strokeai"
    rows = list(
        csv.DictReader(io.StringIO(rb.cli("studies", "timeline", study_uid, "--csv").stdout))
    )
    assert [r["kind"] for r in rows] == kinds
    missing = rb.cli("studies", "timeline", "1.2.3.999", "--json", check=False)
    assert missing.returncode == 1

    base = f"http://127.0.0.1:{rb.config['http']['listen']['port']}/api/v1"
    headers = {"Authorization": f"Bearer {_token(rb)}"}
    answer = httpx.get(f"{base}/studies/{study_uid}/timeline", headers=headers, timeout=10)
    assert answer.status_code == 200
    assert [s["kind"] for s in answer.json()["stamps"]] == kinds
    as_csv = httpx.get(
        f"{base}/studies/{study_uid}/timeline", params={"format": "csv"}, headers=headers
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[0] == "at,kind,subject,reason,detail,job_id"
    assert httpx.get(f"{base}/studies/1.2.3.999/timeline", headers=headers).status_code == 404
    assert httpx.get(f"{base}/studies/{study_uid}/timeline").status_code == 401

    today = date.today().isoformat()
    period = {"from": (date.today() - timedelta(days=1)).isoformat(), "to": today}
    report = httpx.get(f"{base}/reports/turnaround", params=period, headers=headers).json()
    [route] = [r for r in report["routes"] if r["route"] == "stroke"]
    assert route["jobs"] >= 1 and route["door_to_sent"]["count"] >= 1
    assert route["door_to_sent"]["p50"] <= route["door_to_sent"]["p95"]
    [job] = [j for j in report["jobs"] if j["study_uid"] == study_uid]
    assert job["complete_reason"] == "expected_series" and job["vendor"] == "strokeai"
    assert 0 <= job["door_to_complete_seconds"] <= job["door_to_sent_seconds"]
    table = httpx.get(
        f"{base}/reports/turnaround", params={**period, "format": "csv"}, headers=headers
    )
    assert study_uid in table.text
    cli = json.loads(
        rb.cli("studies", "turnaround", "--from", period["from"], "--to", today).stdout
    )
    assert [j["study_uid"] for j in cli["jobs"]] == [j["study_uid"] for j in report["jobs"]]


def test_missing_series_sends_incomplete_at_the_deadline(service: Service) -> None:
    """Head CT and CTA, no perfusion: held past the series' arrival, complete at the
    deadline with the missing series named, and sent (``send_incomplete``); explain says
    which series the route missed."""
    files = stroke_study(service.folder / "partial", ("ct_head", "ct_ccta"), "S2")
    everything = [p for paths in files.values() for p in paths]
    storescu(everything, service.rb.port)
    study_uid = _uid(everything[0])
    assert service.rb.stored_state(study_uid) == "receiving"
    study = _completed(service.rb, study_uid)
    assert study["complete"]["reason"] == "deadline"
    assert "perfusion missing" in study["complete"]["detail"]
    assert "sent incomplete" in study["complete"]["detail"]
    jobs = service.rb.cli("jobs", "list", "--json").stdout
    assert study_uid in jobs
    explained = service.rb.cli("routes", "explain", study_uid, "--json", check=False).stdout
    assert "expected series: route stroke: perfusion missing" in explained
    assert "then send_incomplete" in explained


def test_missing_series_skips_the_route_at_the_deadline(service: Service) -> None:
    """An MR without its DWI series on a ``skip`` route: complete at the deadline, and the
    route does not send it (recorded in the history)."""
    paths = generate_study("mr_brain", service.folder / "mr", instances=1, rows=16, columns=16)
    storescu(paths, service.rb.port)
    study_uid = _uid(paths[0])
    study = _completed(service.rb, study_uid)
    assert study["complete"]["reason"] == "deadline"
    assert "dwi missing" in study["complete"]["detail"]
    wait_until(
        lambda: any(e["kind"] == "route_skipped" for e in service.rb.study(study_uid)["history"]),
        "route skipped recorded",
    )
    assert study_uid not in service.rb.cli("jobs", "list", "--json").stdout


def test_mpps_completed_completes_the_study_once_its_instances_are_in(service: Service) -> None:
    """MPPS N-CREATE (IN PROGRESS), then N-SET COMPLETED listing a chest CT's instances
    before the last ones arrived: the study completes at once when they do, by MPPS; the
    RIS hears of both steps (ORM^O01, ORC-5 IP then CM) naming its order, the first one
    before any image of the study arrived."""
    paths = generate_study(
        "ct_chest", service.folder / "chest", instances=3, rows=16, columns=16, accession="MPPS0001"
    )
    study_uid = _uid(paths[0])
    order = sample_order(7, accession_number="MPPS0001", patient=PATIENT, study_uid=study_uid)
    with MLLPClient("127.0.0.1", int(service.rb.config["hl7"]["listen"]["port"])) as client:
        ack = client.send_message(orm_o01(order))
    assert "MSA|AA" in (ack.decode() if isinstance(ack, bytes) else str(ack))
    step = ProcedureStep("127.0.0.1", service.rb.port)
    assert step.create(step_dataset(study_uid, "IN PROGRESS", accession="MPPS0001")) == 0
    assert step.create(step_dataset(study_uid, "IN PROGRESS")) == 0x0111  # duplicate
    unknown = ProcedureStep("127.0.0.1", service.rb.port)
    assert unknown.set(step_dataset(study_uid, "COMPLETED")) == 0x0112  # no such instance
    storescu(paths[:2], service.rb.port)
    final = step_dataset(study_uid, "COMPLETED", references(paths), accession="MPPS0001")
    assert step.set(final) == 0
    assert service.rb.stored_state(study_uid) == "receiving"  # one instance still missing
    assert step.set(final) == 0x0110  # a COMPLETED step does not change
    storescu(paths[2:], service.rb.port)
    study = _completed(service.rb, study_uid)
    assert study["complete"]["reason"] == "mpps"
    assert [e["reason"] for e in study["history"] if e["kind"] == "mpps"] == [
        "IN PROGRESS",
        "COMPLETED",
    ]
    wait_until(lambda: len(_step_statuses(service.ris, "PL000007")) >= 2, "RIS told of both")
    assert _step_statuses(service.ris, "PL000007") == ["IP", "CM"]


def _step_statuses(ris: Ris, placer: str) -> list[str]:
    """ORC-5 of the order-status messages the RIS got for the order ``placer``."""
    out = []
    for message in ris.messages():
        orc = message.segment("ORC")
        if str(message.segment("MSH")[9]).startswith("ORM") and str(orc[2]) == placer:
            out.append(str(orc[5]))
    return out


def test_ian_completes_the_study(service: Service) -> None:
    """A PACS's Instance Availability Notification listing the study's instances, after
    they arrived: the study completes at once, by IAN."""
    paths = generate_study("dx_chest", service.folder / "dx", instances=1, rows=16, columns=16)
    storescu(paths, service.rb.port)
    study_uid = _uid(paths[0])
    ian = availability_dataset(study_uid, references(paths), "PACS")
    assert notify_availability("127.0.0.1", service.rb.port, ian) == 0
    assert _completed(service.rb, study_uid)["complete"]["reason"] == "ian"


def test_harness_modality_sends_its_procedure_step(service: Service) -> None:
    """``radbridge harness modality send ct_stroke --mpps``: MPPS IN PROGRESS, the three
    series, MPPS COMPLETED listing them; the study completes on the evidence."""
    keep = service.folder / "harness-stroke"
    sent = cli_fork.run(
        ["harness", "modality", "send", "ct_stroke", "--mpps", "--instances", "2",
         "--rows", "16", "--columns", "16", "--accession", "H1", "--keep", str(keep),
         "--port", str(service.rb.port)],
        timeout=120, check=False, env=service.rb.env,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "IN PROGRESS: status 0x0000" in sent.stdout
    assert "COMPLETED: status 0x0000" in sent.stdout
    files = sorted(keep.rglob("*.dcm"))
    assert len({pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber for p in files}) == 3
    study = _completed(service.rb, _uid(files[0]))
    assert study["complete"]["reason"] in ("expected_series", "mpps")
    assert [e["reason"] for e in study["history"] if e["kind"] == "mpps"][-1] == "COMPLETED"
