"""Scale-out end to end: `radbridge serve` (delivery.worker_in_service: false) and two
`radbridge worker` processes on RabbitMQ and PostgreSQL share the vendors' jobs through the
store's claims: a vendor of concurrency 2 is served by both workers at once, and a worker
killed with -9 in the middle of a send loses its claim when its lease runs out, and the other
worker sends the job, with no restart of `serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from adapters.dicom.synthetic import generate_study
from tests import cli_fork
from tests.databases import fresh_postgres_database
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [pytest.mark.timeout(300), pytest.mark.rabbitmq, pytest.mark.postgres]
RABBITMQ = "amqp://guest@127.0.0.1:5672//"


def _wait(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Most predicates here run ``radbridge jobs``: a process per poll, so twice a second."""
    wait_until(predicate, what, timeout, interval=0.5)


def _config(folder: Path, database: str, vendor_port: int, concurrency: int) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["storage"]["database"] = database
    config["bus"] = {"url": RABBITMQ, "prefix": f"t{uuid.uuid4().hex[:10]}"}
    config["delivery"] = {
        "worker_in_service": False,
        "lease_seconds": 3,
        "backoff_base_seconds": 0.2,
        "backoff_cap_seconds": 0.5,
    }
    config["vendors"] = {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {
                "type": "dicom",
                "ae_title": "LUNGAI",
                "host": "127.0.0.1",
                "port": vendor_port,
            },
            "concurrency": concurrency,
            "retries": 3,
        }
    }
    config["routes"] = [
        {"name": "chest-ct", "when": {"modality": "CT", "body_part": "CHEST"}, "send": ["lungai"]}
    ]
    return config


@dataclass
class Workers:
    """`radbridge worker` processes, each with its log and the worker id it announced."""

    folder: Path
    processes: list[subprocess.Popen[bytes] | cli_fork.Forked] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def start(self, config_path: Path, count: int = 2) -> None:
        env = {**os.environ, "TCP_NODELAY": "1"}
        for n in range(count):
            log = self.folder / f"worker{n}.log"
            self.processes.append(
                cli_fork.start(["worker", "-c", str(config_path)], env=env, log=log)
            )
        for n in range(count):
            _wait(f"worker {n} to start", lambda n=n: self._started(n) is not None)
            started = self._started(n)
            assert started is not None
            self.ids.append(started)

    def _started(self, n: int) -> str | None:
        for line in (self.folder / f"worker{n}.log").read_text(errors="replace").splitlines():
            if line.startswith("{") and '"radbridge worker started"' in line:
                worker: str = json.loads(line)["worker"]
                return worker
        return None

    def kill9(self, worker: str) -> None:
        """kill -9 the process that runs ``worker`` (one of ours)."""
        n = self.ids.index(worker)
        process = self.processes[n]
        assert worker.split("/")[2] == str(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes started by the test; those still running are stopped at the end."""
    found = Workers(tmp_path)
    yield found
    found.stop()


@pytest.fixture
def database() -> Iterator[str]:
    """A new PostgreSQL database for serve and its workers, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


def _jobs(rb: Radbridge) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(rb.cli("jobs", "list", "--json").stdout)
    return found


def _show(rb: Radbridge, job_id: int) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(rb.cli("jobs", "show", str(job_id), "--json").stdout)
    return shown


class CountingVendor:
    """A pynetdicom SCP that counts the associations open at once (storescp cannot say)."""

    def __init__(self, seconds_per_instance: float) -> None:
        self.port = free_port()
        self.open_now = 0
        self.most = 0
        self.stored: list[str] = []
        self._lock = threading.Lock()
        self._delay = seconds_per_instance
        ae = AE(ae_title="LUNGAI")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, self._opened),
                (evt.EVT_CONN_CLOSE, self._closed),
                (evt.EVT_C_STORE, self._store),
            ],
        )

    def _opened(self, _event: evt.Event) -> None:
        with self._lock:
            self.open_now += 1
            self.most = max(self.most, self.open_now)

    def _closed(self, _event: evt.Event) -> None:
        with self._lock:
            self.open_now -= 1

    def _store(self, event: evt.Event) -> int:
        time.sleep(self._delay)
        with self._lock:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.slow(seconds=15)
def test_two_workers_serve_a_vendor_of_concurrency_2_at_once(
    radbridge_factory: Callable[..., Radbridge],
    workers: Workers,
    database: str,
    tmp_path: Path,
) -> None:
    """Concurrency 2 and two workers: the vendor has two associations open at once, never
    three, and the job histories name both workers as the senders."""
    vendor = CountingVendor(seconds_per_instance=0.25)
    try:
        rb = radbridge_factory(config=_config(tmp_path / "rb", database, vendor.port, 2))
        workers.start(rb.config_path)
        studies = [
            generate_study("ct_chest", tmp_path / f"ct{n}", instances=4, rows=32, columns=32)
            for n in range(6)
        ]
        for files in studies:
            storescu(files, rb.port)
        _wait("the vendor to have every instance", lambda: len(vendor.stored) >= 24, 120)
        _wait(
            "every job to await its result",
            lambda: [j["state"] for j in _jobs(rb)] == ["awaiting_result"] * 6,
        )
    finally:
        vendor.close()
    assert vendor.most == 2
    senders = {
        event["worker"]
        for job in _jobs(rb)
        for event in _show(rb, job["id"])["history"]
        if event["to_state"] == "sending"
    }
    assert senders == set(workers.ids)


@pytest.mark.slow(seconds=17)
def test_kill_9_of_a_worker_mid_send_the_other_finishes_after_the_lease(
    radbridge_factory: Callable[..., Radbridge],
    workers: Workers,
    database: str,
    tmp_path: Path,
) -> None:
    """kill -9 of the worker sending a job: once its 3 s lease ran out, serve's timer takes the
    claim over (the attempt counts) and the other worker sends the whole study; serve keeps
    running, and no instance reaches the vendor more than twice."""
    slow = ["+uf", "--sleep-during", "1"]  # a file per receipt; 1 s per C-STORE
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI", extra_args=slow) as vendor:
        rb = radbridge_factory(config=_config(tmp_path / "rb", database, vendor.port, 1))
        assert rb.process is not None
        serve_pid = rb.process.pid
        workers.start(rb.config_path)
        files = generate_study("ct_chest", tmp_path / "ct", instances=6, rows=32, columns=32)
        storescu(files, rb.port)
        _wait("the first instance at the vendor", lambda: len(vendor.files()) >= 1)
        [job] = _jobs(rb)
        sending = _show(rb, job["id"])
        assert sending["state"] == "sending"
        killed = sending["claimed_by"]
        workers.kill9(killed)
        _wait(
            "the job to await its result",
            lambda: _jobs(rb)[0]["state"] == "awaiting_result",
            timeout=90,
        )
        assert rb.process is not None and rb.process.pid == serve_pid
        assert rb.process.poll() is None
    received: dict[str, int] = {}
    for path in vendor.files():
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        received[sop] = received.get(sop, 0) + 1
    assert set(received) == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files
    }
    assert max(received.values()) <= 2
    (other,) = set(workers.ids) - {killed}
    history = _show(rb, job["id"])["history"]
    steps = [(event["to_state"], event["worker"]) for event in history]
    assert steps == [
        ("pending", None),
        ("sending", killed),
        ("failed", killed),
        ("pending", None),
        ("sending", other),
        ("sent", other),
        ("awaiting_result", other),
    ]
    assert f"the lease of worker {killed} ran out" in history[2]["error"]
    assert all(e["snapshot"] for e in history if e["worker"] is not None)
