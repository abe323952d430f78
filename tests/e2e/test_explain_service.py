"""End to end: the REST API's and the console's explain of a study a real ``radbridge serve``
routed tell a job that reached its vendor from one that never did."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(240)
PASSWORD = "correct-horse-9"


def _vendor(ae: str, port: int) -> dict[str, Any]:
    return {
        "product": f"{ae.title()} product",
        "transport": {"type": "dicom", "ae_title": ae, "host": LOOPBACK, "port": port},
        "retries": 1,
    }


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(predicate, "condition", timeout, interval=0.2)


def _jobs(rb: Radbridge) -> dict[str, dict[str, Any]]:
    return {j["vendor"]: j for j in json.loads(rb.cli("jobs", "list", "--json").stdout)}


@pytest.mark.slow(seconds=25)
def test_api_and_console_explain_say_delivered_only_for_a_job_that_reached_its_vendor(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """lungai receives the CT, downai never answers (dead): the API and the console say
    'already delivered' for lungai only, and 'a job exists … not delivered' for downai."""
    ct = generate_study("ct_chest", tmp_path / "ct", instances=3, rows=32, columns=32)
    uid = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as lung:
        http_port = free_port()
        config = base_config(tmp_path / "rb", free_port())
        config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
        config["delivery"] = {"backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2}
        config["vendors"] = {
            "lungai": _vendor("LUNGAI", lung.port),
            "downai": _vendor("DOWNAI", free_port()),
        }
        config["routes"] = [
            {"name": "chest", "when": {"modality": "CT"}, "send": ["lungai", "downai"]}
        ]
        rb = radbridge_factory(config=config)
        storescu(ct, rb.port)
        _wait(
            lambda: (
                (jobs := _jobs(rb)).get("lungai", {}).get("state") == "awaiting_result"
                and jobs.get("downai", {}).get("state") == "dead"
            )
        )
        jobs = _jobs(rb)
        base = f"http://{LOOPBACK}:{http_port}"

        token = rb.cli("tokens", "create", "--role", "viewer", "--name", "t").stdout.strip()
        answer = httpx.get(
            f"{base}/api/v1/routes/explain/{uid}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        explained = answer.json()
        assert explained["outcome"] == "nothing_new"
        delivered = f"lungai: already delivered (job {jobs['lungai']['id']}, route 'chest'"
        never = (
            f"downai: a job exists (job {jobs['downai']['id']}, route 'chest', dead), "
            "not delivered to the vendor"
        )
        assert delivered in explained["text"] and never in explained["text"]
        assert "downai: already delivered" not in explained["text"]
        (row,) = explained["routes"]
        assert {j["vendor"]: j["delivered"] for j in row["jobs"]} == {
            "lungai": True,
            "downai": False,
        }

        rb.add_user("op", "operator", PASSWORD)
        with httpx.Client(base_url=base, timeout=10) as console:
            login = console.post("/console/login", data={"username": "op", "password": PASSWORD})
            assert login.status_code in (200, 303), login.text
            page = console.get("/console/routes", params={"study_uid": uid})
        assert page.status_code == 200, page.text
        assert "already delivered (job" in page.text
        assert "downai: a job exists (job" in page.text
        assert "downai: already delivered" not in page.text
