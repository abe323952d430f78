"""Results intake against a running ``radbridge serve``: C-STORE to the results AE (storescu),
STOW-RS and the JSON findings callback (httpx), orphans, resends, kill -9."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from tests.e2e.test_pipeline import _config
from tests.integration.test_results_sr import _dciodvfy, head_bleed, nothing_found
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.slow(seconds=20),
    pytest.mark.xdist_group("results_intake"),
]

TOKEN = "lungai-results-" + uuid.uuid4().hex
QUIET_SECONDS = 5.0


def _wait(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    return wait_until(predicate, what, timeout, interval=0.2)


@dataclass
class Stack:
    """radbridge routing chest CTs to the ``lungai`` storescp, its results AE and HTTP server."""

    rb: Radbridge
    vendor: StoreSCP
    http: str
    studies: dict[str, list[Path]]
    folder: Path

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.rb.cli(*args, "--json").stdout)

    def job(self, name: str) -> dict[str, Any]:
        uid = self.study_uid(name)
        [job] = [j for j in self.cli_json("jobs", "list") if j["study_uid"] == uid]
        return job

    def study_uid(self, name: str) -> str:
        return str(pydicom.dcmread(self.studies[name][0], stop_before_pixels=True).StudyInstanceUID)

    def results(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.cli_json(
            "results", "list", "--study", self.study_uid(name)
        )
        return out

    def wait_received(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        """The job once its result is in: ``result_received``, or already past it (the
        route writes back nowhere, so the job goes on to ``done`` at once)."""
        later = ("result_received", "writing_back", "done")
        found: dict[str, Any] = _wait(
            lambda: (j := self.job(name))["state"] in later and j,
            timeout,
            f"job of study {name} result_received",
        )
        return found

    def sr_file(self, name: str, findings: dict[str, Any], key: str) -> Path:
        """An SR a vendor would send for study ``name`` (made with radbridge's own builder)."""
        source = read_source_study(self.studies[name])
        doc = findings | {"study_instance_uid": source.study_uid}
        ds = findings_to_sr(parse_findings(json.dumps(doc).encode()), source, result_id=key)
        path = self.folder / f"{key}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Four chest CTs routed to lungai (jobs awaiting_result) and one MR routed nowhere."""
    folder = tmp_path_factory.mktemp("results")
    studies = {
        name: generate_study(
            "ct_chest", folder / name, instances=6, rows=32, columns=32, accession=name
        )
        for name in ("dicom", "stow", "findings", "crash")
    }
    studies["unknown"] = generate_study("mr_brain", folder / "mr", instances=2, rows=16, columns=16)
    with StoreSCP(folder / "lungai", ae_title="LUNGAI") as vendor:
        config = _config(folder / "rb", vendor.port)
        config["vendors"]["lungai"]["results"] = {"quiet_seconds": QUIET_SECONDS}
        port = free_port()
        config["http"] = {"listen": {"host": "127.0.0.1", "port": port}}
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN"] = TOKEN
        rb.start()
        try:
            s = Stack(rb, vendor, f"http://127.0.0.1:{port}", studies, folder)
            for name in ("dicom", "stow", "findings", "crash"):
                storescu(studies[name], rb.port)
            _wait(
                lambda: (
                    sum(j["state"] == "awaiting_result" for j in s.cli_json("jobs", "list")) == 4
                ),
                60,
                "four jobs awaiting_result",
            )
            yield s
        finally:
            rb.close()


def test_c_store_sr_matches_job_counts_resend_once_and_completes_after_quiet_period(
    stack: Stack,
) -> None:
    """An SR C-STOREd twice by the vendor's AE to RADBRIDGE_RES is one object of the job's
    result, kept under spool/results and not indexed; the job goes awaiting_result →
    result_received after the quiet period (`results show` says when, in the site's time, and
    why); the SR's Priority=Urgent makes the result urgent."""
    sr = stack.sr_file("dicom", head_bleed(read_source_study(stack.studies["dicom"])), "v-dicom")
    before = stack.rb.study(stack.study_uid("dicom"))
    storescu([sr, sr], stack.rb.port, called_ae="RADBRIDGE_RES", calling_ae="LUNGAI")
    sent_at = time.monotonic()
    [collecting] = stack.results("dicom")
    assert collecting["state"] == "collecting"
    assert collecting["job_id"] == stack.job("dicom")["id"]
    stack.wait_received("dicom")
    assert time.monotonic() - sent_at >= QUIET_SECONDS - 0.5  # waited for the quiet period
    [result] = stack.results("dicom")
    assert result["state"] == "complete" and result["urgent"] is True
    [obj] = result["objects"]
    assert obj["origin"] == "dicom"
    assert obj["sop_instance_uid"] == pydicom.dcmread(sr).SOPInstanceUID
    assert Path(obj["path"]).is_relative_to(stack.rb.spool / "results")
    assert Path(obj["path"]).read_bytes()[128:132] == b"DICM"
    show = stack.cli_json("results", "show", str(result["id"]))
    assert show["receive_counts"] == {obj["sop_instance_uid"]: 2}
    assert show["complete_reason"] == "quiet"
    shown = stack.rb.cli("results", "show", str(result["id"])).stdout  # in the site's clock
    assert re.search(r"completed: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d \(quiet\)", shown), (
        shown
    )
    after = stack.rb.study(stack.study_uid("dicom"))  # the study was not re-opened by the SR
    assert after["instances"] == before["instances"] and after["state"] == "stable"
    history = stack.cli_json("jobs", "show", str(result["job_id"]))["history"]
    states = [h["to_state"] for h in history]
    assert states[states.index("awaiting_result") + 1] == "result_received"


def test_sr_for_an_unknown_study_is_an_orphan_kept_in_the_spool(stack: Stack) -> None:
    """An SR about a study no job sent is kept, listed by ``results orphans``, never dropped."""
    sr = stack.sr_file("unknown", nothing_found(read_source_study(stack.studies["unknown"])), "o")
    storescu([sr], stack.rb.port, called_ae="RADBRIDGE_RES", calling_ae="LUNGAI")
    orphans = stack.cli_json("results", "orphans")
    [orphan] = [o for o in orphans if o["study_uid"] == stack.study_uid("unknown")]
    assert orphan["orphan"] is True and orphan["job_id"] is None
    assert orphan["vendor"] == "lungai"
    [obj] = orphan["objects"]
    assert Path(obj["path"]).exists()
    assert not any(s["study_uid"] == stack.study_uid("unknown") for s in stack.rb.studies())


def _stow(files: list[Path], boundary: str = "rb-test") -> tuple[bytes, str]:
    body = b""
    for path in files:
        body += (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes()
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_rs_needs_the_vendor_token_and_answers_per_ps3_18(stack: Stack) -> None:
    """STOW-RS: no or a wrong token → 401; right token → 200 listing the SOP in 0008,1199;
    an object of another study than the URL's → 409 with FailureReason 0xA900 in 0008,1198."""
    sr = stack.sr_file("stow", nothing_found(read_source_study(stack.studies["stow"])), "v-stow")
    body, content_type = _stow([sr])
    url = f"{stack.http}/results/studies"
    headers = {"Content-Type": content_type}
    assert httpx.post(url, content=body, headers=headers).status_code == 401
    wrong = {**headers, "Authorization": "Bearer nope"}
    assert httpx.post(url, content=body, headers=wrong).status_code == 401
    good = {**headers, "Authorization": f"Bearer {TOKEN}"}
    other = httpx.post(f"{url}/{stack.study_uid('dicom')}", content=body, headers=good)
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/dicom+json")
    [failed] = other.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA900]
    ok = httpx.post(f"{url}/{stack.study_uid('stow')}", content=body, headers=good)
    assert ok.status_code == 200, ok.text
    [stored] = ok.json()["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [str(pydicom.dcmread(sr).SOPInstanceUID)]
    [result] = stack.results("stow")
    assert result["job_id"] == stack.job("stow")["id"]
    assert [o["origin"] for o in result["objects"]] == ["stow"]
    stack.wait_received("stow")


def test_json_findings_complete_at_once_and_become_a_valid_sr(stack: Stack) -> None:
    """Findings with ``complete: true`` complete the job at once (well before the quiet period);
    radbridge files a Comprehensive SR it made (origin generated) that passes dciodvfy;
    invalid findings get 400 naming the field; another vendor's token cannot post."""
    job = stack.job("findings")
    url = f"{stack.http}/results/jobs/{job['id']}/findings"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    doc = nothing_found(read_source_study(stack.studies["findings"])) | {"complete": True}
    bad = httpx.post(url, json={**doc, "findings": [{"present": True}]}, headers=auth)
    assert bad.status_code == 400
    assert any(p.startswith("findings[0].code") for p in bad.json()["problems"])
    assert httpx.post(url, json=doc, headers={"Authorization": "Bearer x"}).status_code == 401
    answer = httpx.post(url, json=doc, headers=auth)
    assert answer.status_code == 202, answer.text
    stack.wait_received("findings")
    [result] = stack.results("findings")
    assert result["id"] == answer.json()["result_id"] and result["state"] == "complete"
    show = stack.cli_json("results", "show", str(result["id"]))
    assert show["complete_reason"] == "vendor"
    took = datetime.fromisoformat(result["completed_at"]) - datetime.fromisoformat(
        result["created_at"]
    )
    assert took.total_seconds() < QUIET_SECONDS / 2  # did not wait for the quiet period
    [sr] = result["objects"]
    assert sr["origin"] == "generated"
    assert sr["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.33"
    ds = pydicom.dcmread(sr["path"])
    assert ds.StudyInstanceUID == stack.study_uid("findings")
    report = _dciodvfy(Path(sr["path"]))
    assert not [line for line in report if line.startswith("Error")], report


def test_result_acknowledged_before_kill_9_survives_and_completes_after_restart(
    stack: Stack,
) -> None:
    """kill -9 right after the results C-STORE was acknowledged: after restart the object is
    still recorded and in the spool, and the result completes (the due time is in the store)."""
    sr = stack.sr_file("crash", nothing_found(read_source_study(stack.studies["crash"])), "v-k")
    storescu([sr], stack.rb.port, called_ae="RADBRIDGE_RES", calling_ae="LUNGAI")
    stack.rb.kill9()
    [result] = stack.results("crash")  # the CLI reads the store while radbridge is down
    assert result["state"] == "collecting"
    assert Path(result["objects"][0]["path"]).exists()
    stack.rb.start()
    stack.wait_received("crash")
    [result] = stack.results("crash")
    assert result["state"] == "complete" and len(result["objects"]) == 1
