"""Knowing how each AI product performs, through one ``radbridge serve`` (module-scoped):
two vendors (dcmtk ``storescp`` each) read head CTs sent by ``storescu``; an operator pauses
one for maintenance (CLI, API, console) and its jobs wait while the other vendor's go out,
then resume sends them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(240)

RESULTS_TOKEN = "lungai-results-token-0123456789"


@dataclass
class Site:
    rb: Radbridge
    lungai: StoreSCP
    ichai: StoreSCP
    base: str
    operator: dict[str, str]
    folder: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}/api/v1{path}", headers=self.operator, timeout=10, **kwargs
        )

    def jobs(self, study_uid: str) -> dict[str, dict[str, Any]]:
        """The study's jobs by vendor (``GET /api/v1/jobs``)."""
        items = self.api("GET", "/jobs", params={"study_uid": study_uid}).json()["items"]
        return {j["vendor"]: j for j in items}

    def head_ct(self, n: int) -> tuple[list[Path], str]:
        files = generate_study(
            "ct_head",
            self.folder / f"study{n}",
            instances=3,
            rows=16,
            columns=16,
            accession=f"ACC-MON-{n}",
        )
        storescu(files, self.rb.port)
        study_uid = str(_study_uid(files[0]))
        return files, study_uid


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """radbridge with an HTTP API and console, and two vendors reading every head CT."""
    folder = tmp_path_factory.mktemp("monitoring")
    http_port = free_port()
    with (
        StoreSCP(folder / "lungai", ae_title="LUNGAI") as lungai,
        StoreSCP(folder / "ichai", ae_title="ICHAI") as ichai,
    ):
        config = base_config(folder / "rb", free_port())
        config["site"] = {"name": "Monitoring Test Hospital", "timezone": "Asia/Shanghai"}
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["vendors"] = {
            name: {
                "product": product,
                "transport": {
                    "type": "dicom",
                    "ae_title": scp.ae_title,
                    "host": "127.0.0.1",
                    "port": scp.port,
                },
                "results": {"quiet_seconds": 1.0},
            }
            for name, product, scp in (
                ("lungai", "CT head bleed A", lungai),
                ("ichai", "CT head bleed B", ichai),
            )
        }
        config["routes"] = [
            {
                "name": "head-ct",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["lungai", "ichai"],
            }
        ]
        config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN"] = RESULTS_TOKEN
        rb.start()
        try:
            token = rb.cli("tokens", "create", "--role", "operator", "--name", "ops").stdout
            operator = {"Authorization": f"Bearer {token.strip()}"}
            yield Site(rb, lungai, ichai, f"http://127.0.0.1:{http_port}", operator, folder)
        finally:
            rb.close()


@contextmanager
def _console(site: Site) -> Iterator[httpx.Client]:
    """A console session opened with the operator's API token."""
    with httpx.Client(base_url=f"{site.base}/console", timeout=10) as client:
        token = site.operator["Authorization"].removeprefix("Bearer ")
        answer = client.post("/login", data={"token": token})
        assert answer.status_code == 303, answer.text
        yield client


def test_paused_vendor_jobs_wait_then_resume_delivers(site: Site) -> None:
    """`vendors pause lungai --until 2h --reason` holds lungai's job pending with no attempt
    while ichai's job for the same study is sent; the API, the dashboard and the vendor's
    jobs page say why and until when; resuming from the console sends it; pause and resume
    are in the audit trail with their actors."""
    paused = site.rb.cli("vendors", "pause", "lungai", "--until", "2h", "--reason", "upgrade v3")
    assert "paused until" in paused.stdout
    listed = json.loads(site.rb.cli("vendors", "list", "--json").stdout)
    assert [v["name"] for v in listed if v["paused"]] == ["lungai"]

    files, study_uid = site.head_ct(1)
    wait_until(lambda: len(site.ichai.files()) >= len(files), "ichai has the study")
    jobs = wait_until(
        lambda: (
            (j := site.jobs(study_uid)).get("ichai", {}).get("state")
            in ("sent", "awaiting_result", "done")
            and j
        ),
        "ichai's job sent",
    )
    assert jobs["lungai"]["state"] == "pending"
    assert jobs["lungai"]["attempts"] == 0
    assert site.lungai.files() == []

    vendor = site.api("GET", "/vendors/lungai", params={"probe": "false"}).json()
    assert vendor["paused"]["reason"] == "upgrade v3"
    assert vendor["paused"]["until"] is not None
    assert site.api("GET", "/vendors/ichai", params={"probe": "false"}).json()["paused"] is None

    with _console(site) as console:
        dashboard = console.get("/").text
        assert re.search(r'data-paused="lungai"', dashboard)
        assert "upgrade v3" in dashboard
        page = console.get("/jobs", params={"vendor": "lungai"}).text
        assert 'data-paused="yes"' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        resumed = console.post(
            "/vendors/lungai/resume", data={"csrf": csrf.group(1), "next": "/console/jobs"}
        )
        assert resumed.status_code == 303, resumed.text

    wait_until(lambda: len(site.lungai.files()) >= len(files), "lungai has the study")
    assert site.api("POST", "/vendors/lungai/resume").status_code == 409  # not paused

    # The API pauses too; a time in the past is refused with the parameter named.
    bad = site.api("POST", "/vendors/ichai/pause", json={"until": "2001-01-01T00:00"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "until"]
    ok = site.api("POST", "/vendors/ichai/pause", json={"reason": "network work"})
    assert ok.json()["paused"]["by"].startswith("token:")
    assert site.api("POST", "/vendors/ichai/resume").json()["paused"] is None

    admin = site.rb.cli("tokens", "create", "--role", "admin").stdout.strip()
    audit = httpx.get(
        f"{site.base}/api/v1/audit",
        headers={"Authorization": f"Bearer {admin}"},
        params={"target": "vendor:lungai"},
        timeout=10,
    ).json()["items"]
    actions = [(a["action"], a["actor"].split(":")[0]) for a in reversed(audit)]
    assert actions == [("vendor.pause", "cli"), ("vendor.resume", "console")]
