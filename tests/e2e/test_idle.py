"""An idle ``radbridge serve`` (the embedded default: SQLite, in-process bus) leaves its store
alone, and still acts at once on what comes after a long quiet: a study from the modality
(``storescu``) reaches the vendor (dcmtk ``storescp``), the vendor's result (an SR by
C-STORE to the results AE, recorded by a listener process) reaches the PACS (a second
``storescp``), a vendor's pause made by another process (the CLI) ends by itself, and a
killed listener process is replaced.

The counts come from the service's own ``/metrics``: the wake-ups of its timers and the
claims its lanes tried, each of which reads the store."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adapters.dicom.listener import SUPERVISE_SECONDS
from adapters.dicom.synthetic import generate_study
from adapters.harness.process import free_port
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from broker.engine.timer import WATCHED_SLEEP
from broker.runtime.retention import SPACE_SECONDS
from tests.integration.test_results_sr import head_bleed
from tests.peers import StoreSCP, echoscu, storescu, wait_until
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("idle")]

#: Seconds the service is left before it is watched: its start's first sweeps (or the
#: previous test's work) are over by then, as in the ingest benchmark.
SETTLE = 10.0
#: Seconds the idle service is watched; the old timers woke 1 or 2 times a second each.
WINDOW = 6.0
#: Longer than any poll of the old code (0.5 or 1 s): a timer that slept would have ticked by now.
QUIET = 3.0
#: A wait well below the timers' longest sleep (WATCHED_SLEEP): what is due is not left to it.
PROMPT = WATCHED_SLEEP / 3


@dataclass
class Idle:
    rb: Radbridge
    vendor: StoreSCP
    pacs: StoreSCP
    metrics_url: str
    folder: Path

    def counts(self) -> dict[str, float]:
        """The timers' wake-ups (``timer:NAME``) and the lanes' claims (``lane:NOUN``)."""
        text = httpx.get(self.metrics_url, timeout=30).text
        found: dict[str, float] = {}
        for kind, name, value in re.findall(
            r'^radbridge_(timer_ticks|lane_looks)_total\{(?:timer|noun)="([^"]+)"\} (\S+)$',
            text,
            re.MULTILINE,
        ):
            found[f"{'timer' if kind == 'timer_ticks' else 'lane'}:{name}"] = float(value)
        return found

    def settled(self) -> dict[str, float]:
        """The counts once the service's start is over: unchanged over ``QUIET`` seconds
        but for the engine timer's free-space checks."""

        def still() -> dict[str, float] | None:
            before = self.counts()
            time.sleep(QUIET)
            after = self.counts()
            moved = {k for k in after if after[k] != before.get(k) and k != "timer:engine"}
            return None if moved else after

        found: dict[str, float] = wait_until(still, "the service settled", 60, interval=0)
        return found

    def job_state(self, study_uid: str) -> str | None:
        """The state of the study's job (``radbridge jobs list``), None before it is made."""
        jobs = json.loads(self.rb.cli("jobs", "list", "--json").stdout)
        return next((j["state"] for j in jobs if j["study_uid"] == study_uid), None)

    def study(self, n: int) -> list[Path]:
        """A head CT of 6 instances sent by ``storescu`` (one association)."""
        files = generate_study(
            "ct_head", self.folder / f"study{n}", instances=6, rows=16, columns=16
        )
        storescu(files, self.rb.port)
        return files


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idle]:
    """radbridge with its HTTP server (for /metrics), a head-CT vendor (storescp) whose results
    come back to RADBRIDGE_RES, complete with their one object, written back to a PACS
    (storescp)."""
    folder = tmp_path_factory.mktemp("idle")
    http_port = free_port()
    with (
        StoreSCP(folder / "vendor", ae_title="ICHAI") as vendor,
        StoreSCP(folder / "pacs", ae_title="PACS") as pacs,
    ):
        config = base_config(folder / "rb", free_port())
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["vendors"] = {
            "ichai": {
                "product": "Head CT bleed triage",
                "transport": dicom_block("ICHAI", vendor.port),
                "results": {"expected_objects": 1},
            }
        }
        config["targets"] = {"pacs": dicom_block("PACS", pacs.port)}
        config["routes"] = [
            {
                "name": "head-ct-bleed",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["ichai"],
                "priority": "stat",
                "write_back": ["pacs"],
            }
        ]
        rb = Radbridge(folder / "rb", config).start()
        try:
            yield Idle(rb, vendor, pacs, f"http://127.0.0.1:{http_port}/metrics", folder)
        finally:
            rb.close()


def test_the_idle_service_does_not_look_at_its_store(idle: Idle) -> None:
    """Over six idle seconds the completion and results timers never wake and the lanes try
    no claim; the engine timer wakes only for the free-space check (every 5 s). The code
    before made at least 6 completion, 12 results and 6 engine wake-ups and 12 claims (a
    vendor lane and a target lane, each every second) in that time."""
    time.sleep(SETTLE)
    before = idle.counts()
    time.sleep(WINDOW)
    after = idle.counts()
    moved = {k: after[k] - before.get(k, 0.0) for k in after}
    assert moved.get("timer:completion", 0) == 0, moved
    assert moved.get("timer:results", 0) == 0, moved
    assert moved.get("lane:job", 0) == 0 and moved.get("lane:delivery", 0) == 0, moved
    assert moved.get("timer:engine", 0) <= WINDOW // SPACE_SECONDS + 1, moved


def test_a_study_and_its_result_after_a_quiet_time_go_through_at_once(idle: Idle) -> None:
    """After the service settled (its timers asleep), a study sent by storescu reaches the
    vendor, and the vendor's SR, C-STOREd to the results AE (recorded by a listener
    process: only the store tells the service), reaches the PACS: each well within the
    timers' longest sleep."""
    idle.settled()
    files = idle.study(1)
    wait_until(lambda: len(idle.vendor.files()) >= len(files), "the vendor has the study", PROMPT)
    source = read_source_study(files)
    sr = findings_to_sr(
        parse_findings(json.dumps(head_bleed(source)).encode()), source, result_id="idle-1"
    )
    path = idle.folder / "vendor-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    wait_until(lambda: idle.job_state(source.study_uid) == "awaiting_result", "job sent", 60, 0.5)
    idle.settled()
    storescu([path], idle.rb.port, called_ae="RADBRIDGE_RES", calling_ae="ICHAI")
    wait_until(idle.pacs.files, "the PACS has the vendor's SR", PROMPT)


def test_a_pause_made_by_the_cli_ends_by_itself_and_the_study_goes_out(idle: Idle) -> None:
    """A pause of the vendor made by another process (``radbridge vendors pause --until 4s``)
    holds the next study's job; at its end, with no other change, the job goes out."""
    idle.settled()
    idle.rb.cli("vendors", "pause", "ichai", "--until", "4s")
    before = len(idle.vendor.files())
    files = idle.study(2)
    wait_until(
        lambda: len(idle.vendor.files()) >= before + len(files),
        "the vendor has the study after the pause",
        PROMPT,
    )


def test_a_killed_listener_process_is_replaced_by_the_sleeping_supervisor(idle: Idle) -> None:
    """The supervisor sleeps until a listener process ends: one killed with -9 is replaced
    (a new process answers C-ECHO), well within the supervisor's longest sleep."""
    [process] = idle.rb.listener_processes()
    process.kill()
    process.wait(10)
    wait_until(
        lambda: [p for p in idle.rb.listener_processes() if p.pid != process.pid],
        "a new listener process",
        SUPERVISE_SECONDS / 3,
    )
    wait_until(
        lambda: echoscu(idle.rb.port, check=False).returncode == 0, "C-ECHO answered", 30, 0.5
    )
