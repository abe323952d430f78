"""An operator's cancel while ``radbridge serve`` is POSTing a job's manifest to an HTTP
vendor: the vendor (a loopback vendor API that takes a few seconds to register each
manifest) gets the ``DELETE`` for the job only after it answered the ``POST``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.dicom.synthetic import generate_study
from tests.integration.contracts.kits import HttpVendorApi
from tests.peers import LOOPBACK, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

#: How long the vendor takes over a manifest: ample for an operator's cancel meanwhile.
HOLD = 15.0


def _config(folder: Path, url: str) -> dict[str, Any]:
    config = base_config(folder, free_port(), study_stable_seconds=0.5)
    config["http"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
    config["vendors"] = {
        "cloud": {
            "product": "CT head bleed (cloud)",
            "transport": {"type": "http", "url": url, "timeout": 30},
        }
    }
    config["routes"] = [
        {"name": "head-ct", "when": {"modality": "CT", "body_part": "HEAD"}, "send": ["cloud"]}
    ]
    config["delivery"] = {"backoff_base_seconds": 0.5, "backoff_cap_seconds": 1.0}
    return config


def _jobs(rb: Radbridge) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(rb.cli("jobs", "list", "--json").stdout)
    return found


def test_a_cancel_while_the_manifest_is_posted_reaches_the_vendor_after_it(
    tmp_path: Path,
) -> None:
    """The job is cancelled (``radbridge jobs cancel``) while the vendor still registers its
    manifest; the vendor is told (``DELETE {url}/{job_id}``, reason ``cancelled``) once,
    after it answered the POST, never before it."""
    files = generate_study("ct_head", tmp_path / "study", instances=2, rows=32, columns=32)
    with HttpVendorApi(hold=HOLD) as api:
        rb = Radbridge(tmp_path / "rb", _config(tmp_path / "rb", api.url))
        try:
            rb.start()
            storescu(files, rb.port)
            wait_until(lambda: "POST" in api.seen, "the manifest POSTed", timeout=60)
            [job] = _jobs(rb)
            assert job["state"] == "sending"
            cancelled = rb.cli("jobs", "cancel", str(job["id"]))
            assert "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
            assert "POST answered" not in api.seen  # the cancel came while the POST was held
            wait_until(lambda: api.cancellations, "the vendor told", timeout=60)
            [(path, body)] = api.cancellations
            assert api.seen == ["POST", "POST answered", f"DELETE {path}"]
            assert (path, body) == (
                f"/api/jobs/{job['id']}",
                {"job_id": job["id"], "vendor": "cloud", "reason": "cancelled"},
            )
            assert [j["state"] for j in _jobs(rb)] == ["cancelled"]
        finally:
            rb.close()
