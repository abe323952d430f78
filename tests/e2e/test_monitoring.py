"""The monitoring examples (examples/monitoring) against the real tools: ``promtool`` checks
and unit-tests the alerting rules, and every metric the rules and the Grafana dashboard
query is in ``/metrics`` of a real ``radbridge serve`` once a study went through (storescu →
radbridge → vendor storescp, its SR back by C-STORE, written back to a storescp PACS)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapters.dicom.synthetic import generate_study
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from tests.integration.test_results_sr import head_bleed
from tests.peers import LOOPBACK, StoreSCP, ensure_debian_packages, free_port, storescu
from tests.service import Radbridge, base_config

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("monitoring")]

MONITORING = Path(__file__).resolve().parents[2] / "examples" / "monitoring"
RULES = MONITORING / "radbridge.rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\bradbridge_[a-z0-9_]+")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    ensure_debian_packages("promtool")
    return subprocess.run(
        ["promtool", *args], check=False, cwd=MONITORING, capture_output=True, text=True, timeout=60
    )


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (str(t["expr"]) for t in panel.get("targets", []) if "expr" in t)
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def test_promtool_accepts_the_alerting_rules() -> None:
    """``promtool check rules`` finds every rule of the file valid (PromQL and templates)."""
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rule_exprs())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    """``promtool test rules``: store down, dead jobs growing and no intake during the day
    fire when they should and stay quiet when they should."""
    done = _promtool("test", "rules", "radbridge.rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The sample names of ``/metrics`` after one head CT went to the vendor (and one to a
    vendor that is down: a dead job and delivery errors), its SR came back and reached the
    PACS."""
    folder = tmp_path_factory.mktemp("monitoring")
    with (
        StoreSCP(folder / "ichai", ae_title="ICHAI") as vendor,
        StoreSCP(folder / "pacs", ae_title="PACS") as pacs,
    ):
        http_port = free_port()
        config = base_config(folder / "rb", free_port())
        config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
        transport = {"type": "dicom", "host": LOOPBACK}
        config["vendors"] = {
            "ichai": {
                "product": "Head CT bleed triage",
                "transport": {**transport, "ae_title": "ICHAI", "port": vendor.port},
                "results": {"quiet_seconds": 0.5},
            },
            "downai": {
                "product": "Down",
                "transport": {**transport, "ae_title": "DOWNAI", "port": free_port()},
                "retries": 1,
            },
        }
        config["targets"] = {"pacs": {**transport, "ae_title": "PACS", "port": pacs.port}}
        config["routes"] = [
            {
                "name": "head-ct",
                "when": {"modality": "CT"},
                "send": ["ichai", "downai"],
                "priority": "stat",
                "deadline": "1h",
                "write_back": ["pacs"],
            }
        ]
        config["delivery"] = {"backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2}
        rb = Radbridge(folder / "rb", config)
        rb.start()
        try:
            files = generate_study("ct_head", folder / "study", instances=5, rows=16, columns=16)
            storescu(files, rb.port)
            deadline = time.monotonic() + 60
            while len(vendor.files()) < len(files):
                assert time.monotonic() < deadline, "the vendor did not get the study"
                time.sleep(0.1)
            source = read_source_study(files)
            sr = findings_to_sr(
                parse_findings(json.dumps(head_bleed(source)).encode()), source, result_id="m-1"
            )
            sr.save_as(folder / "sr.dcm", enforce_file_format=True)
            storescu([folder / "sr.dcm"], rb.port, called_ae="RADBRIDGE_RES", calling_ae="ICHAI")
            wanted = (  # store figures are cached 5 s: wait for them, not only histograms
                "radbridge_writeback_latency_seconds_count",
                'radbridge_jobs{state="dead",vendor="downai"} 1.0',
                'radbridge_deliveries{state="done",target="pacs"} 1.0',
            )
            while True:
                text = httpx.get(f"http://{LOOPBACK}:{http_port}/metrics", timeout=5).text
                if all(w in text for w in wanted):
                    break
                assert time.monotonic() < deadline, f"metrics never showed {wanted}:\n{text}"
                time.sleep(0.2)
            yield {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        finally:
            rb.close()


def test_every_metric_queried_is_exported(scraped: set[str]) -> None:
    """Every ``radbridge_*`` name in the alerting rules' and the dashboard's queries has
    samples in a running service's ``/metrics`` (a renamed or dropped metric fails here)."""
    for exprs in (_rule_exprs(), _dashboard_exprs()):
        used = {name for expr in exprs for name in METRIC.findall(expr)}
        assert len(used) >= 8
        assert sorted(used - scraped) == []
