"""Reloading the configuration of a running ``radbridge serve`` (SIGHUP, the file changing,
the REST API, ``radbridge config reload``), with dcmtk ``storescp`` vendors and ``storescu``."""

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

import httpx
import pydicom
import pytest
import yaml

from adapters.dicom.synthetic import generate_study
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from tests import cli_fork
from tests.databases import fresh_postgres_database
from tests.integration.test_results_sr import nothing_found
from tests.peers import StoreSCP, echoscu, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(300)

CHEST = {"modality": "CT", "body_part": {"in": ["CHEST", "LUNG"]}}


def _wait(predicate: Callable[[], Any], timeout: float = 40.0, what: str = "condition") -> Any:
    return wait_until(predicate, what, timeout, interval=0.1)


def _vendor(ae_title: str, port: int, **more: Any) -> dict[str, Any]:
    transport = {"type": "dicom", "ae_title": ae_title, "host": "127.0.0.1", "port": port}
    return {"product": f"{ae_title} product", "transport": transport, **more}


def _config(folder: Path, vendors: dict[str, Any], routes: list[dict[str, Any]]) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["vendors"] = vendors
    config["routes"] = routes
    config["delivery"] = {"backoff_base_seconds": 0.3, "backoff_cap_seconds": 1.0}
    config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    return config


class Running:
    """A running radbridge, its configuration file, its reload events and its API."""

    def __init__(self, rb: Radbridge) -> None:
        self.rb = rb
        listen = rb.config["http"]["listen"]
        self.url = f"http://{listen['host']}:{listen['port']}"
        self.token = rb.cli("tokens", "create", "--role", "admin").stdout.strip()

    @property
    def config(self) -> dict[str, Any]:
        return self.rb.config

    def write(self, config: dict[str, Any]) -> None:
        """Write the file (the service sees the new modification time within 2 s)."""
        self.rb.config = config
        text = yaml.safe_dump(config)
        tmp = self.rb.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.rb.config_path)

    def sighup(self) -> None:
        assert self.rb.process is not None
        self.rb.process.send_signal(1)

    def reloads(self) -> list[dict[str, Any]]:
        """Every reload the log tells of, accepted or refused, oldest first."""
        events = (
            "configuration reloaded",
            "configuration reloaded; nothing changed",
            "configuration not reloaded; the running configuration stays in force",
        )
        return [line for line in self.rb.log_lines() if line.get("event") in events]

    def next_reload(self, after: int, what: str) -> dict[str, Any]:
        """The first reload event after the ``after`` first ones that changed or refused."""
        found: dict[str, Any] = _wait(
            lambda: next(
                (e for e in self.reloads()[after:] if not e["event"].endswith("nothing changed")),
                None,
            ),
            what=what,
        )
        return found

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def in_force(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.api("GET", "/api/v1/config").json()
        return answer

    def audited_reloads(self) -> list[dict[str, Any]]:
        """The audit trail's config.reload entries, newest first."""
        answer = self.api("GET", "/api/v1/audit", params={"action": "config.reload"})
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def jobs(self, vendor: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.rb.cli("jobs", "list", "--json").stdout)
        return [j for j in found if vendor is None or j["vendor"] == vendor]

    def job_of(self, files: list[Path], vendor: str) -> dict[str, Any] | None:
        uid = _study_uid(files)
        return next((j for j in self.jobs(vendor) if j["study_uid"] == uid), None)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return cli_fork.run(
            [*args, "-c", str(self.rb.config_path)], env={**self.rb.env, **(env or {})}, timeout=120
        )


def _radbridge() -> list[str]:
    from tests.service import RADBRIDGE  # noqa: PLC0415 (one place names the executable)

    return [RADBRIDGE]


def _study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _sops(paths: list[Path]) -> list[str]:
    return sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths)


@pytest.fixture
def start(
    radbridge_factory: Callable[..., Radbridge],
) -> Callable[[dict[str, Any]], Running]:
    """Start radbridge with a configuration; stopped at the end of the test."""

    def make(config: dict[str, Any]) -> Running:
        return Running(radbridge_factory(config=config))

    return make


@pytest.fixture
def studies(tmp_path: Path) -> dict[str, list[Path]]:
    """Two chest CTs, two chest X-rays (DX)."""
    made = {}
    for name, kind in (("ct1", "ct_chest"), ("ct2", "ct_chest"), ("dx1", "dx_chest")):
        made[name] = generate_study(kind, tmp_path / name, instances=4, rows=32, columns=32)
    made["dx2"] = generate_study("dx_chest", tmp_path / "dx2", instances=2, rows=32, columns=32)
    return made


@pytest.fixture
def vendors(tmp_path: Path) -> Iterator[dict[str, StoreSCP]]:
    """Three storescp vendors: LUNGAI and LUNGAI on a second port, BONEAI (+uf: every
    received object is its own file, so a second receipt shows)."""
    scps = {
        "lung_a": StoreSCP(tmp_path / "lung_a", ae_title="LUNGAI", extra_args=["+uf"]),
        "lung_b": StoreSCP(tmp_path / "lung_b", ae_title="LUNGAI", extra_args=["+uf"]),
        "bone": StoreSCP(tmp_path / "bone", ae_title="BONEAI", extra_args=["+uf"]),
    }
    for scp in scps.values():
        scp.start()
    try:
        yield scps
    finally:
        for scp in scps.values():
            scp.stop()


def _result_sr(files: list[Path], folder: Path, key: str) -> Path:
    """A vendor's result for the study of ``files``: an SR that found nothing."""
    source = read_source_study(files)
    findings = parse_findings(json.dumps(nothing_found(source)).encode())
    sr = findings_to_sr(findings, source, result_id=key)
    path = folder / f"{key}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------ the original bug


def test_vendor_and_route_added_while_running_receive_the_next_study_and_its_result(
    start: Callable[[dict[str, Any]], Running],
    vendors: dict[str, StoreSCP],
    studies: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    """Regression: a vendor and a route added to the running file ("vendors=4") get the next
    matching study, its result is matched to the job, its metrics show, and a restart sends
    nothing again."""
    lung = vendors["lung_a"]
    idle = {"ichai": _vendor("ICHAI", free_port()), "cardioai": _vendor("CARDIOAI", free_port())}
    config = _config(
        tmp_path / "rb",
        {"lungai": _vendor("LUNGAI", lung.port), **idle},
        [{"name": "chest-ct", "when": CHEST, "send": ["lungai"]}],
    )
    svc = start(config)
    assert 'vendor="boneai"' not in httpx.get(svc.url + "/metrics", timeout=30).text
    seen = len(svc.reloads())
    added = json.loads(json.dumps(config))
    added["vendors"]["boneai"] = _vendor("BONEAI", vendors["bone"].port)
    added["vendors"]["boneai"]["results"] = {"quiet_seconds": 1}
    added["routes"].append(
        {"name": "chest-xray-bone", "when": {"modality": "DX"}, "send": ["boneai"]}
    )
    svc.write(added)  # no signal: the service sees the file change
    event = svc.next_reload(seen, "the added vendor reloaded")
    assert event["event"] == "configuration reloaded" and event["vendors"] == 4
    assert "vendors.boneai: added" in "\n".join(event["changes"])
    assert 'vendor="boneai"' in httpx.get(svc.url + "/metrics", timeout=30).text

    storescu(studies["dx1"], svc.rb.port)
    _wait(lambda: len(vendors["bone"].files()) == len(studies["dx1"]), what="boneai has the study")
    assert _sops(vendors["bone"].files()) == _sops(studies["dx1"])
    job = _wait(
        lambda: (
            (j := svc.job_of(studies["dx1"], "boneai")) and j["state"] == "awaiting_result" and j
        ),
        what="boneai job awaiting its result",
    )
    assert "no vendor 'boneai'" not in svc.rb.log_path.read_text()

    sr = _result_sr(studies["dx1"], tmp_path, "bone-result")
    storescu([sr], svc.rb.port, called_ae="RADBRIDGE_RES", calling_ae="BONEAI")
    _wait(
        lambda: (j := svc.job_of(studies["dx1"], "boneai")) and j["state"] == "done",
        what="the result of the added vendor matched to its job",
    )
    results = json.loads(svc.rb.cli("results", "list", "--json").stdout)
    assert [r["job_id"] for r in results if r["vendor"] == "boneai"] == [job["id"]]

    svc.rb.stop()
    svc.rb.start()
    time.sleep(2)  # a restart that re-sent the study would have started by now
    assert svc.job_of(studies["dx1"], "boneai")["state"] == "done"  # type: ignore[index]
    assert len(vendors["bone"].files()) == len(studies["dx1"])


# ------------------------------------------------------------------ vendor address


def test_changed_vendor_port_applies_to_the_next_job_and_nothing_goes_to_the_old_one(
    start: Callable[[dict[str, Any]], Running],
    vendors: dict[str, StoreSCP],
    studies: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    """A vendor's port changed by SIGHUP: the next study goes to the new port only."""
    old, new = vendors["lung_a"], vendors["lung_b"]
    config = _config(
        tmp_path / "rb",
        {"lungai": _vendor("LUNGAI", old.port)},
        [{"name": "chest-ct", "when": CHEST, "send": ["lungai"]}],
    )
    svc = start(config)
    storescu(studies["ct1"], svc.rb.port)
    _wait(lambda: len(old.files()) == len(studies["ct1"]), what="the first study at the old port")
    _wait(lambda: (j := svc.job_of(studies["ct1"], "lungai")) and j["state"] == "awaiting_result")

    seen = len(svc.reloads())
    moved = json.loads(json.dumps(config))
    moved["vendors"]["lungai"]["transport"]["port"] = new.port
    svc.write(moved)
    svc.sighup()
    event = svc.next_reload(seen, "the moved vendor reloaded")
    assert event["event"] == "configuration reloaded"
    assert f"vendors.lungai.transport.port: {old.port} → {new.port}" in "\n".join(event["changes"])

    storescu(studies["ct2"], svc.rb.port)
    _wait(lambda: len(new.files()) == len(studies["ct2"]), what="the next study at the new port")
    assert _sops(new.files()) == _sops(studies["ct2"])
    time.sleep(1)
    assert _sops(old.files()) == _sops(studies["ct1"])  # nothing more at the retired address
    assert svc.in_force()["snapshot"] == event["snapshot"]


# ------------------------------------------------------------------ restart required


def test_changed_listen_port_is_refused_as_restart_required_and_the_old_port_serves(
    start: Callable[[dict[str, Any]], Running],
    vendors: dict[str, StoreSCP],
    studies: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    """dicom.listen.port changed (with a vendor moved in the same edit): the reload is refused
    as a whole, "restart required: dicom.listen.port changed"; the old port and the old
    vendor address stay in force; config diff says so with exit code 1."""
    old, new = vendors["lung_a"], vendors["lung_b"]
    config = _config(
        tmp_path / "rb",
        {"lungai": _vendor("LUNGAI", old.port)},
        [{"name": "chest-ct", "when": CHEST, "send": ["lungai"]}],
    )
    svc = start(config)
    in_force = svc.in_force()["snapshot"]
    seen = len(svc.reloads())
    edited = json.loads(json.dumps(config))
    new_listen = free_port()
    edited["dicom"]["listen"]["port"] = new_listen
    edited["vendors"]["lungai"]["transport"]["port"] = new.port
    svc.write(edited)
    svc.sighup()
    event = svc.next_reload(seen, "the refused reload")
    assert event["event"].startswith("configuration not reloaded")
    assert event["problems"] == ["restart required: dicom.listen.port changed"]

    refused = svc.api("POST", "/api/v1/config/reload")
    assert refused.status_code == 409
    assert refused.json()["detail"]["problems"] == ["restart required: dicom.listen.port changed"]
    diff = svc.cli("config", "diff")
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "restart required: dicom.listen.port changed" in diff.stdout
    assert f"vendors.lungai.transport.port: {old.port} → {new.port}" in diff.stdout

    echoscu(svc.rb.port)
    assert echoscu(new_listen, check=False).returncode != 0
    storescu(studies["ct1"], svc.rb.port)
    _wait(lambda: len(old.files()) == len(studies["ct1"]), what="the study at the old address")
    assert new.files() == [] and svc.in_force()["snapshot"] == in_force
    reloads = svc.audited_reloads()
    assert {a["detail"]["trigger"] for a in reloads} >= {"sighup", "api"}
    assert all(not a["detail"]["reloaded"] for a in reloads)


# ------------------------------------------------------------------ removal and drain


def test_removed_vendor_with_pending_jobs_is_refused_then_drains_its_jobs(
    start: Callable[[dict[str, Any]], Running],
    vendors: dict[str, StoreSCP],
    studies: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    """A vendor with an unfinished job removed: refused naming the job (SIGHUP, API, config
    diff exit 3); with `config reload --drain` it gets no new study, still delivers and
    receives the result of its job, then leaves the configuration in force (audited)."""
    bone_port = free_port()  # nothing listens yet: the job keeps failing and retrying
    config = _config(
        tmp_path / "rb",
        {
            "lungai": _vendor("LUNGAI", vendors["lung_a"].port),
            "boneai": _vendor("BONEAI", bone_port, retries=100, results={"quiet_seconds": 1}),
        },
        [
            {"name": "chest-ct", "when": CHEST, "send": ["lungai"]},
            {"name": "chest-xray-bone", "when": {"modality": "DX"}, "send": ["boneai"]},
        ],
    )
    svc = start(config)
    storescu(studies["dx1"], svc.rb.port)
    job = _wait(lambda: svc.job_of(studies["dx1"], "boneai"), what="the boneai job")

    removed = json.loads(json.dumps(config))
    del removed["vendors"]["boneai"]
    removed["routes"] = removed["routes"][:1]
    seen = len(svc.reloads())
    svc.write(removed)
    svc.sighup()
    event = svc.next_reload(seen, "the refused removal")
    assert event["event"].startswith("configuration not reloaded")
    [problem] = event["problems"]
    assert problem.startswith(
        f"vendors.boneai removed while it has 1 unfinished job(s): {job['id']} ("
    )

    refused = svc.api("POST", "/api/v1/config/reload")
    assert refused.status_code == 409
    assert refused.json()["detail"]["unfinished"] == {"vendors.boneai": [job["id"]]}
    diff = svc.cli("config", "diff")
    assert diff.returncode == 3, diff.stdout + diff.stderr
    assert f"vendors.boneai is removed but has job(s) {job['id']} (" in diff.stdout

    drained = svc.cli("config", "reload", "--drain", env={"RADBRIDGE_API_TOKEN": svc.token})
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert "draining: boneai" in drained.stdout
    in_force = svc.in_force()
    assert in_force["draining"] == ["boneai"]
    assert [r["name"] for r in in_force["settings"]["routes"]] == ["chest-ct"]

    storescu(studies["dx2"], svc.rb.port)  # no route sends to a draining vendor
    _wait(
        lambda: any(e.get("event") == "study unrouted" for e in svc.rb.log_lines()),
        what="the second X-ray decided",
    )
    assert svc.job_of(studies["dx2"], "boneai") is None

    with StoreSCP(tmp_path / "bone_late", ae_title="BONEAI", port=bone_port) as bone:
        _wait(lambda: len(bone.files()) == len(studies["dx1"]), what="the drained job delivered")
        _wait(lambda: svc.job_of(studies["dx1"], "boneai")["state"] == "awaiting_result")  # type: ignore[index]
        assert svc.in_force()["draining"] == ["boneai"]  # its result is still due
        sr = _result_sr(studies["dx1"], tmp_path, "bone-result")
        storescu([sr], svc.rb.port, called_ae="RADBRIDGE_RES", calling_ae="BONEAI")
        _wait(lambda: svc.job_of(studies["dx1"], "boneai")["state"] == "done")  # type: ignore[index]
    after = _wait(lambda: (c := svc.in_force()) and not c["draining"] and c, what="drained")
    assert "boneai" not in after["settings"]["vendors"]
    triggers = [a["detail"]["trigger"] for a in svc.audited_reloads()]
    assert "drained" in triggers and "api" in triggers
    assert svc.cli("config", "diff").returncode == 0


# ------------------------------------------------------------------ during a reload


def test_study_arriving_during_reloads_is_routed_once(
    start: Callable[[dict[str, Any]], Running],
    vendors: dict[str, StoreSCP],
    tmp_path: Path,
) -> None:
    """While the configuration is swapped again and again, a study is routed once: one job,
    and the vendor receives each instance once."""
    lung = vendors["lung_a"]
    files = generate_study("ct_chest", tmp_path / "ct", instances=10, rows=32, columns=32)
    config = _config(
        tmp_path / "rb",
        {"lungai": _vendor("LUNGAI", lung.port)},
        [{"name": "chest-ct", "when": CHEST, "send": ["lungai"]}],
    )
    config["dicom"]["study_stable_seconds"] = 0.5
    svc = start(config)
    stop = threading.Event()
    swaps = [0]

    def storm() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            edited = json.loads(json.dumps(config))
            edited["vendors"]["lungai"]["concurrency"] = 1 + n % 2
            svc.write(edited)
            svc.sighup()
            swaps[0] += 1
            time.sleep(0.15)

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    try:
        storescu(files, svc.rb.port)
        _wait(
            lambda: (j := svc.job_of(files, "lungai")) and j["state"] == "awaiting_result",
            what="the study delivered",
        )
    finally:
        stop.set()
        thread.join(10)
    accepted = [e for e in svc.reloads() if e["event"] == "configuration reloaded"]
    assert len(accepted) >= 3, f"only {len(accepted)} swaps of {swaps[0]} during the study"
    time.sleep(1)
    assert len(svc.jobs("lungai")) == 1
    assert _sops(lung.files()) == _sops(files)  # each instance once (+uf keeps repeats)
    routed = [e for e in svc.rb.log_lines() if e.get("event") == "study routed"]
    assert len(routed) == 1 and routed[0]["snapshot"].startswith("cfg-")


# ------------------------------------------------------------------ the command line


def test_config_reload_without_http_server_says_to_use_sighup(
    start: Callable[[dict[str, Any]], Running], vendors: dict[str, StoreSCP], tmp_path: Path
) -> None:
    """`config reload` of a configuration without HTTP server, or without a token, says
    what would work (exit 2); with the token it reloads (exit 0)."""
    config = _config(
        tmp_path / "rb",
        {"lungai": _vendor("LUNGAI", vendors["lung_a"].port)},
        [{"name": "chest-ct", "when": CHEST, "send": ["lungai"]}],
    )
    svc = start(config)
    env = {k: v for k, v in os.environ.items() if k != "RADBRIDGE_API_TOKEN"}
    no_token = subprocess.run(
        [*_radbridge(), "config", "reload", "-c", str(svc.rb.config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert no_token.returncode == 2 and "RADBRIDGE_API_TOKEN" in no_token.stderr
    plain = json.loads(json.dumps(config))
    del plain["http"]
    other = tmp_path / "plain.yaml"
    other.write_text(yaml.safe_dump(plain))
    no_http = subprocess.run(
        [*_radbridge(), "config", "reload", "-c", str(other)],
        capture_output=True,
        text=True,
        env={**env, "RADBRIDGE_API_TOKEN": svc.token},
        timeout=60,
        check=False,
    )
    assert no_http.returncode == 2 and "SIGHUP" in no_http.stderr
    same = svc.cli("config", "reload", env={"RADBRIDGE_API_TOKEN": svc.token})
    assert same.returncode == 0 and "nothing changed" in same.stdout


# ------------------------------------------------------------------ scale-out


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_vendor_added_by_reload_reaches_the_workers_on_rabbitmq_and_postgresql(
    radbridge_factory: Callable[..., Radbridge],
    vendors: dict[str, StoreSCP],
    studies: dict[str, list[Path]],
    tmp_path: Path,
) -> None:
    """RabbitMQ, PostgreSQL and two `radbridge worker` processes (the service delivers
    nothing itself): a vendor and a route added to the file are delivered by the workers,
    which follow the service's snapshot in force."""
    bus = {"url": "amqp://guest@127.0.0.1:5672//", "prefix": f"t{uuid.uuid4().hex[:10]}"}
    with fresh_postgres_database() as database:
        config = _config(
            tmp_path / "rb",
            {"lungai": _vendor("LUNGAI", vendors["lung_a"].port)},
            [{"name": "chest-ct", "when": CHEST, "send": ["lungai"]}],
        )
        config["storage"]["database"] = database
        config["bus"] = bus
        config["delivery"]["worker_in_service"] = False
        shared = tmp_path / "workers.yaml"
        shared.write_text(yaml.safe_dump(config))
        svc = Running(radbridge_factory(config=config))
        logs = [tmp_path / f"worker{n}.log" for n in range(2)]
        workers = [
            cli_fork.start(["worker", "-c", str(shared)], env=svc.rb.env, log=log) for log in logs
        ]
        try:
            _wait(lambda: all("radbridge worker started" in p.read_text() for p in logs))
            added = json.loads(json.dumps(config))
            added["vendors"]["boneai"] = _vendor("BONEAI", vendors["bone"].port)
            added["routes"].append(
                {"name": "chest-xray-bone", "when": {"modality": "DX"}, "send": ["boneai"]}
            )
            seen = len(svc.reloads())
            shared.write_text(yaml.safe_dump(added))
            svc.write(added)
            assert svc.next_reload(seen, "the service reloaded")["vendors"] == 2
            _wait(
                lambda: all(
                    '"event": "configuration reloaded"' in (text := p.read_text())
                    and "vendors.boneai: added" in text
                    for p in logs
                ),
                what="both workers put the added vendor in force",
            )
            storescu(studies["dx1"], svc.rb.port)
            storescu(studies["ct1"], svc.rb.port)
            _wait(lambda: len(vendors["bone"].files()) == len(studies["dx1"]), what="boneai")
            _wait(lambda: len(vendors["lung_a"].files()) == len(studies["ct1"]), what="lungai")
            assert _sops(vendors["bone"].files()) == _sops(studies["dx1"])
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(30)
            svc.rb.close()
