"""The REST API of a real ``radbridge serve`` after real deliveries (storescu → radbridge →
dcmtk storescp vendors): usage matches the jobs, trial quotas in both modes, an audit row
for every send and every operator action (API and CLI), metrics and health."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from tests.peers import LOOPBACK, StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = pytest.mark.timeout(120)


def _vendor(ae: str, port: int, **billing: Any) -> dict[str, Any]:
    return {
        "product": f"{ae.title()} product",
        "transport": {"type": "dicom", "ae_title": ae, "host": LOOPBACK, "port": port},
        "retries": 1,
        "billing": billing,
    }


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_until(predicate, "condition", timeout, interval=0.1)


def test_usage_quota_audit_and_metrics_after_real_deliveries(
    radbridge_factory: Callable[..., Radbridge], tmp_path: Path
) -> None:
    """Two chest CTs to three vendors: lungai (trial 1, stop routing) gets only the first,
    ribai (trial 1, per series, mark unbillable) both, the second unbillable, downai is down
    (dead). Usage per vendor equals the jobs sent; every send and action is audited."""
    cts = [
        generate_study(
            "ct_chest",
            tmp_path / f"ct{n}",
            instances=4,
            rows=32,
            columns=32,
            accession=f"ACC{n}",
            study_uid=f"1.2.826.0.1.3680043.10.511.90{n}",
        )
        for n in (1, 2)
    ]
    with (
        StoreSCP(tmp_path / "lungai", ae_title="LUNGAI") as lung,
        StoreSCP(tmp_path / "ribai", ae_title="RIBAI") as rib,
    ):
        http_port = free_port()
        config = base_config(tmp_path / "rb", free_port())
        config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
        config["delivery"] = {"backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2}
        config["vendors"] = {
            "lungai": _vendor(
                "LUNGAI", lung.port, price=30, trial_quota=1, when_quota_used="stop_routing"
            ),
            "ribai": _vendor(
                "RIBAI", rib.port, unit="series", trial_quota=1, when_quota_used="mark_unbillable"
            ),
            "downai": _vendor("DOWNAI", free_port()),
        }
        config["routes"] = [
            {"name": "chest", "when": {"modality": "CT"}, "send": ["lungai", "ribai", "downai"]}
        ]
        rb = radbridge_factory(config=config)
        base = f"http://{LOOPBACK}:{http_port}"
        token = rb.cli("tokens", "create", "--role", "operator", "--name", "ops").stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}

        def api(path: str, **params: Any) -> Any:
            answer = httpx.get(f"{base}/api/v1{path}", headers=auth, params=params, timeout=10)
            assert answer.status_code == 200, answer.text
            return answer.json()

        def jobs(**params: Any) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = api("/jobs", limit=500, **params)["items"]
            return result

        storescu(cts[0], rb.port)
        _wait(lambda: len(jobs(state="awaiting_result")) == 2 and len(jobs(state="dead")) == 1)
        storescu(cts[1], rb.port)
        _wait(lambda: len(jobs(state="awaiting_result")) == 3 and len(jobs(state="dead")) == 2)
        time.sleep(0.3)
        sent = jobs(state="awaiting_result")
        assert sorted(j["vendor"] for j in sent) == ["lungai", "ribai", "ribai"]
        [refused] = [
            line
            for line in rb.log_lines()
            if line["event"] == "contract: vendor not sent the study"
        ]
        assert refused["vendor"] == "lungai" and "used up" in str(refused["why"])
        assert len(lung.files()) == len(cts[0]) and len(rib.files()) == 2 * len(cts[0])

        # Usage: the API, the CLI and the jobs agree.
        today = datetime.now(UTC).date()
        period = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}
        lines = {line["vendor"]: line for line in api("/usage", **period)}
        series_per_study = len({pydicom.dcmread(p).SeriesInstanceUID for p in cts[0]})
        assert lines["lungai"]["studies"] == 1 and lines["lungai"]["trial"] == 1
        assert lines["ribai"]["studies"] == 2 and lines["ribai"]["unit"] == "series"
        assert lines["ribai"]["trial"] == series_per_study
        assert lines["ribai"]["unbillable"] == series_per_study
        assert "downai" not in lines  # never delivered
        cli = json.loads(
            rb.cli(
                "usage",
                "report",
                "--from",
                period["from"],
                "--to",
                period["to"],
                "--format",
                "json",
            ).stdout
        )
        assert {line["vendor"]: line for line in cli} == lines
        csv_text = rb.cli("usage", "report", "--from", period["from"], "--to", period["to"]).stdout
        assert csv_text.splitlines()[0].startswith("vendor,product,site,day,unit,studies")

        # Operator actions: retry via the CLI, cancel via the API.
        dead = jobs(state="dead")[0]["id"]
        assert "pending" in rb.cli("jobs", "retry", str(dead)).stdout
        cancel = next(j["id"] for j in sent if j["vendor"] == "ribai")
        answer = httpx.post(f"{base}/api/v1/jobs/{cancel}/cancel", headers=auth, timeout=10)
        assert answer.json()["state"] == "cancelled"

        audit = json.loads(
            rb.cli("audit", "export", "--from", period["from"], "--to", period["to"]).stdout
        )
        by_action: dict[str, list[dict[str, Any]]] = {}
        for row in audit:
            by_action.setdefault(row["action"], []).append(row)
        assert len(by_action["study.sent"]) == 3
        for row in by_action["study.sent"]:
            job = next(j for j in sent if f"job:{j['id']}" == row["target"])
            assert row["detail"]["vendor"] == job["vendor"] == row["peer"]
            assert row["detail"]["route"] == "chest" and len(row["detail"]["series_uids"]) >= 1
        [created] = by_action["token.create"]
        assert created["actor"].startswith("cli:") and created["detail"]["role"] == "operator"
        [retried] = by_action["job.retry"]
        assert retried["actor"].startswith("cli:") and retried["target"] == f"job:{dead}"
        [cancelled] = by_action["job.cancel"]
        assert cancelled["actor"] == "token:1 (ops)" and cancelled["peer"] == LOOPBACK
        admin = rb.cli("tokens", "create", "--role", "admin").stdout.strip()
        auth["Authorization"] = f"Bearer {admin}"  # the audit trail is for admins
        assert api("/audit", action="study.sent")["items"][0]["action"] == "study.sent"

        # Health and metrics (loopback: no token needed).
        assert httpx.get(f"{base}/healthz", timeout=5).json()["status"] == "ok"
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert (
            'radbridge_delivery_latency_seconds_count{priority="routine",vendor="lungai"} 1.0'
            in metrics
        )
        assert re.search(r'radbridge_errors_total\{kind="\w+",stage="delivery"\} [1-9]', metrics)
        assert f"radbridge_received_instances_total {2 * len(cts[0])}.0" in metrics
        assert httpx.get(f"{base}/api/v1/jobs", timeout=5).status_code == 401
