"""End to end: storescu → radbridge → routing → job → vendor storescp, on both buses."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pynetdicom import AE, AllStoragePresentationContexts, evt

from adapters.dicom.synthetic import generate_study
from tests import cli_fork
from tests.peers import StoreSCP, dataset_bytes, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(240)


def _config(
    folder: Path, lung_port: int, bus: dict[str, Any] | None = None, **delivery: Any
) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["vendors"] = {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {
                "type": "dicom",
                "ae_title": "LUNGAI",
                "host": "127.0.0.1",
                "port": lung_port,
            },
            "retries": 2,
        }
    }
    config["routes"] = [
        {
            "name": "chest-ct-lung-nodule",
            "when": {
                "modality": "CT",
                "body_part": {"in": ["CHEST", "LUNG"]},
                "series.slice_thickness": {"lte": 2.5},
            },
            "send": ["lungai"],
            "series": "thinnest_axial",
        }
    ]
    config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5, **delivery}
    if bus:
        config["bus"] = bus
    return config


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Most predicates here run ``radbridge jobs list``: a process per poll, so twice a second."""
    wait_until(predicate, timeout=timeout, interval=0.5)


def _jobs(rb: Radbridge) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(rb.cli("jobs", "list", "--json").stdout)
    return result


@pytest.fixture
def studies(tmp_path: Path) -> dict[str, list[Path]]:
    """A thin-slice chest CT (routed to the lung vendor) and a brain MR (routed nowhere)."""
    return {
        "ct": generate_study("ct_chest", tmp_path / "ct", instances=12, rows=64, columns=64),
        "mr": generate_study("mr_brain", tmp_path / "mr", instances=3, rows=32, columns=32),
    }


def _check_delivery(rb: Radbridge, vendor: StoreSCP, studies: dict[str, list[Path]]) -> None:
    storescu(studies["ct"], rb.port)
    storescu(studies["mr"], rb.port)
    _wait(lambda: len(vendor.files()) >= len(studies["ct"]))
    time.sleep(0.5)
    received = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in vendor.files()
    }
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in studies["ct"]}
    assert received.keys() == sent.keys()  # the CT, all of it, and nothing of the MR
    for sop, path in sent.items():
        assert dataset_bytes(received[sop]) == dataset_bytes(path)
    _wait(lambda: any(j["state"] == "awaiting_result" for j in _jobs(rb)))
    [job] = _jobs(rb)
    assert job["vendor"] == "lungai" and job["route"] == "chest-ct-lung-nodule"
    mr_study = pydicom.dcmread(studies["mr"][0]).StudyInstanceUID
    assert "study unrouted" in rb.log_path.read_text()
    [unrouted] = [line for line in rb.log_lines() if line["event"] == "study unrouted"]
    assert unrouted["study_uid"].startswith("h:")  # hashed, not the UID
    assert unrouted["condition"] and unrouted["closest_route"]
    assert unrouted["study_value"] == "[redacted]"  # the MR's own value of the failed condition
    explain = cli_fork.run(
        ["routes", "explain", "-c", str(rb.config_path), mr_study],
        timeout=60,
        check=False,
    )
    assert explain.returncode == 3
    assert "chest-ct-lung-nodule" in explain.stdout and "got HEAD" in explain.stdout


def test_chest_ct_reaches_the_lung_vendor_and_brain_mr_does_not(
    radbridge_factory: Callable[..., Radbridge], studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    """Embedded default: the CT arrives intact at the lung vendor's storescp; the MR is unrouted."""
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port))
        _check_delivery(rb, vendor, studies)


@pytest.fixture
def rabbit_workers(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    """Start `radbridge worker` processes for a configuration; stop them at the end."""
    started: list[subprocess.Popen[bytes] | cli_fork.Forked] = []

    def start(config_path: Path) -> None:
        for n in range(2):
            log = tmp_path / f"worker{n}.log"
            started.append(
                cli_fork.start(["worker", "-c", str(config_path)], env=os.environ, log=log)
            )
        _wait(
            lambda: all(
                "radbridge worker started" in (tmp_path / f"worker{n}.log").read_text()
                for n in range(2)
            )
        )

    yield start
    for process in started:
        process.terminate()
        process.wait(30)


@pytest.mark.rabbitmq
def test_same_flow_on_rabbitmq_with_two_workers(
    radbridge_factory: Callable[..., Radbridge],
    rabbit_workers: Callable[[Path], None],
    studies: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    """RabbitMQ and two `radbridge worker` processes: the CT arrives intact, the MR nowhere."""
    bus = {"url": "amqp://guest@127.0.0.1:5672//", "prefix": f"t{uuid.uuid4().hex[:10]}"}
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as vendor:
        config = _config(tmp_path / "rb", vendor.port, bus=bus, worker_in_service=False)
        config_path = tmp_path / "shared.yaml"
        config_path.write_text(yaml.safe_dump(config))
        rabbit_workers(config_path)
        rb = radbridge_factory(config=config)
        _check_delivery(rb, vendor, studies)


def test_vendor_down_job_dies_then_operator_retry_delivers(
    radbridge_factory: Callable[..., Radbridge], studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    """With the vendor down the job retries, then is dead; `jobs retry` delivers once it is up."""
    port = free_port()
    rb = radbridge_factory(config=_config(tmp_path / "rb", port))
    storescu(studies["ct"], rb.port)
    _wait(lambda: any(j["state"] == "dead" for j in _jobs(rb)))
    [job] = _jobs(rb)
    assert job["attempts"] == 2
    history = rb.cli("jobs", "show", str(job["id"])).stdout
    assert history.count("sending") >= 2 and "dead" in history
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI", port=port) as vendor:
        assert "pending" in rb.cli("jobs", "retry", str(job["id"])).stdout
        _wait(lambda: len(vendor.files()) >= len(studies["ct"]))
        _wait(lambda: _jobs(rb)[0]["state"] == "awaiting_result")


def test_broken_configuration_on_reload_keeps_the_running_routes(
    radbridge_factory: Callable[..., Radbridge], studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    """A broken file on SIGHUP is refused with its problems logged; routing goes on unchanged."""
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port))
        good = rb.config_path.read_text()
        rb.config_path.write_text(good.replace("send:\n  - lungai", "send:\n  - nosuchvendor"))
        assert rb.process is not None
        rb.process.send_signal(1)  # SIGHUP
        _wait(lambda: "configuration not reloaded" in rb.log_path.read_text())
        assert "nosuchvendor" in rb.log_path.read_text()
        storescu(studies["ct"], rb.port)
        _wait(lambda: len(vendor.files()) >= len(studies["ct"]))


@pytest.mark.slow
def test_kill_9_during_delivery_the_job_completes_after_restart(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """kill -9 mid-delivery: the job completes after restart; the vendor got it twice at most."""
    # Five instances at 1 s per C-STORE: the kill after the second lands mid-delivery.
    ct = generate_study("ct_chest", tmp_path / "ct", instances=5, rows=64, columns=64)
    slow = ["+uf", "--sleep-during", "1"]  # unique file per receipt; 1 s per C-STORE
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI", extra_args=slow) as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", vendor.port))
        storescu(ct, rb.port)
        _wait(lambda: len(vendor.files()) >= 2)
        rb.kill9()
        rb.start()
        _wait(lambda: _jobs(rb)[0]["state"] == "awaiting_result", timeout=90)
    received: dict[str, int] = {}
    for path in vendor.files():
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        received[sop] = received.get(sop, 0) + 1
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct}
    assert set(received) == sent
    assert max(received.values()) <= 2
    [job] = _jobs(rb)
    shown = json.loads(rb.cli("jobs", "show", str(job["id"]), "--json").stdout)
    steps = [event["to_state"] for event in shown["history"]]
    assert steps.count("sending") == 2 and "failed" in steps
    assert job["attempts"] == 2


@pytest.mark.parametrize("resend", [False, True])
def test_updated_study_is_sent_again_only_when_the_route_says_so(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path, resend: bool
) -> None:
    """A delivered study re-opened by a new image is resent only with resend_updates: true."""
    files = generate_study("ct_chest", tmp_path / "ct", instances=7, rows=32, columns=32)
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI", extra_args=["+uf"]) as vendor:
        config = _config(tmp_path / "rb", vendor.port)
        config["routes"][0]["resend_updates"] = resend
        rb = radbridge_factory(config=config)
        storescu(files[:6], rb.port)
        _wait(lambda: len(vendor.files()) == 6 and _jobs(rb)[0]["state"] == "awaiting_result")
        storescu(files[6:], rb.port)  # the study re-opens, then becomes stable at revision 2
        study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
        rb.wait_state(study_uid, "stable")
        _wait(lambda: rb.study(study_uid)["revision"] == 2)
        if resend:
            _wait(lambda: len(vendor.files()) == 6 + 7)
            _wait(lambda: _jobs(rb)[0]["state"] == "awaiting_result")
            shown = rb.cli("jobs", "show", str(_jobs(rb)[0]["id"])).stdout
            assert "sent again" in shown
        else:
            time.sleep(2)
            assert len(vendor.files()) == 6
            assert _jobs(rb)[0]["attempts"] == 1


@pytest.mark.rabbitmq
def test_vendor_concurrency_holds_across_two_workers(
    radbridge_factory: Callable[..., Radbridge],
    rabbit_workers: Callable[[Path], None],
    tmp_path: Path,
) -> None:
    """With concurrency 1 the vendor never sees two associations at once, even with two workers.

    The vendor here is a pynetdicom SCP in the test process, because it has to
    count concurrent associations, which storescp cannot report.
    """
    open_now = 0
    most = 0
    stored: list[str] = []
    lock = threading.Lock()

    def opened(_event: evt.Event) -> None:
        nonlocal open_now, most
        with lock:
            open_now += 1
            most = max(most, open_now)

    def closed(_event: evt.Event) -> None:
        nonlocal open_now
        with lock:
            open_now -= 1

    def store(event: evt.Event) -> int:
        time.sleep(0.05)
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="LUNGAI")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, opened),
            (evt.EVT_CONN_CLOSE, closed),
            (evt.EVT_C_STORE, store),
        ],
    )
    try:
        bus = {"url": "amqp://guest@127.0.0.1:5672//", "prefix": f"t{uuid.uuid4().hex[:10]}"}
        config = _config(tmp_path / "rb", port, bus=bus, worker_in_service=False)
        config_path = tmp_path / "shared.yaml"
        config_path.write_text(yaml.safe_dump(config))
        rabbit_workers(config_path)
        rb = radbridge_factory(config=config)
        studies = [
            generate_study("ct_chest", tmp_path / f"ct{i}", instances=4, rows=32, columns=32)
            for i in range(4)
        ]
        for files in studies:
            storescu(files, rb.port)
        _wait(lambda: len(stored) >= 16, timeout=60)
    finally:
        server.shutdown()
    assert most == 1


def test_vendor_down_then_back_is_delivered_by_the_automatic_retries(
    radbridge_factory: Callable[..., Radbridge], studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    """A vendor that is down at first and comes back gets the study on a later automatic retry."""
    port = free_port()
    config = _config(tmp_path / "rb", port, backoff_base_seconds=1.0, backoff_cap_seconds=2.0)
    config["vendors"]["lungai"]["retries"] = 10
    rb = radbridge_factory(config=config)
    storescu(studies["ct"], rb.port)
    _wait(lambda: bool(_jobs(rb)) and _jobs(rb)[0]["attempts"] >= 1)
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI", port=port) as vendor:
        _wait(lambda: len(vendor.files()) >= len(studies["ct"]))
        _wait(lambda: _jobs(rb)[0]["state"] == "awaiting_result")
    [job] = _jobs(rb)
    assert 2 <= job["attempts"] <= 10
