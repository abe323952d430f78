"""The simulated AI vendor against real peers: storescu in, Orthanc as the results receiver."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from adapters.dicom.synthetic import generate_study
from adapters.harness.products import other_study_uid
from adapters.harness.vendor import ResultsTarget, SimulatedVendor
from adapters.results.findings import parse_findings
from tests.peers import LOOPBACK, Orthanc, free_port, storescu

pytestmark = [pytest.mark.slow(seconds=20), pytest.mark.xdist_group("harness_vendor")]

Vendor = Callable[..., SimulatedVendor]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc for the module: the results receiver stand-in."""
    with Orthanc(tmp_path_factory.mktemp("orthanc"), aet="RESULTS") as server:
        yield server


def _study(tmp_path: Path, kind: str = "ct_chest", instances: int = 4) -> tuple[Path, str]:
    """A small study in ``tmp_path/study`` and its Study Instance UID."""
    folder = tmp_path / "study"
    files = generate_study(kind, folder, instances=instances, rows=64, columns=64)  # type: ignore[arg-type]
    return folder, _uid(files[0])


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _tags(orthanc: Orthanc, sop_uid: str) -> dict[str, Any]:
    found = orthanc.request(
        "POST",
        "/tools/find",
        json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}).encode(),
    )
    assert len(found) == 1, f"{sop_uid} not in Orthanc"
    tags: dict[str, Any] = orthanc.get(f"/instances/{found[0]}/simplified-tags")
    return tags


def _to_orthanc(orthanc: Orthanc) -> ResultsTarget:
    return ResultsTarget(ae_title="RESULTS", port=orthanc.dicom_port)


@pytest.mark.parametrize(
    ("product", "kind", "result", "sop_class"),
    [
        ("lung-nodule-ct", "ct_chest", "sr", "1.2.840.10008.5.1.4.1.1.88.33"),
        ("head-ct-bleed", "ct_head", "seg", "1.2.840.10008.5.1.4.1.1.66.4"),
        ("fracture", "dx_chest", "sc", "1.2.840.10008.5.1.4.1.1.7"),
    ],
)
def test_storescu_into_vendor_returns_its_result_into_orthanc_under_the_study(
    tmp_path: Path,
    simulated_vendor: Vendor,
    orthanc: Orthanc,
    product: str,
    kind: str,
    result: str,
    sop_class: str,
) -> None:
    """A study sent with storescu comes back as an SR, SEG or SC filed under the same study."""
    folder, study_uid = _study(tmp_path, kind)
    vendor = simulated_vendor(product, result=result, target=_to_orthanc(orthanc))
    storescu(folder, vendor.port, called_ae=vendor.ae_title)
    [delivered] = vendor.wait_delivered(1)
    assert delivered.ok, delivered.detail
    tags = _tags(orthanc, str(delivered.sop_instance_uid))
    assert tags["StudyInstanceUID"] == study_uid and tags["SOPClassUID"] == sop_class
    assert tags["PatientID"] == "PAT0001" and tags["AccessionNumber"] == "ACC0001"


def test_refuse_fault_rejects_storescu(tmp_path: Path, simulated_vendor: Vendor) -> None:
    """With fault refuse, storescu's association is rejected and nothing is received."""
    folder, _ = _study(tmp_path)
    vendor = simulated_vendor(fault="refuse")
    done = storescu(folder, vendor.port, called_ae=vendor.ae_title, check=False)
    assert done.returncode != 0 and "Association Rejected" in done.stderr + done.stdout
    assert vendor.received == []


def test_abort_fault_aborts_storescu_mid_association(
    tmp_path: Path, simulated_vendor: Vendor
) -> None:
    """With fault abort after 2 instances, storescu fails and no result is ever sent."""
    folder, _ = _study(tmp_path, instances=6)
    vendor = simulated_vendor(fault="abort", abort_after=2)
    done = storescu(folder, vendor.port, called_ae=vendor.ae_title, check=False)
    assert done.returncode != 0
    assert len(vendor.received) == 1
    time.sleep(0.3)
    assert vendor.delivered == []


def _gaps(vendor: SimulatedVendor) -> list[float]:
    """Seconds between one instance being filed and the next (one association, in order)."""
    times = sorted(r.path.stat().st_mtime_ns for r in vendor.received)
    return [(b - a) / 1e9 for a, b in itertools.pairwise(times)]


def test_slow_fault_is_measurably_slower(tmp_path: Path, simulated_vendor: Vendor) -> None:
    """With fault slow (0.25 s per instance) each instance is filed at least 0.25 s after the
    one before; without it the same instances follow each other sooner.

    Measured between the instances the vendor files, so that neither storescu's own start
    nor the load of tests running beside this one enters the comparison.
    """
    folder, _ = _study(tmp_path, instances=8)
    fast, slow = simulated_vendor(), simulated_vendor(fault="slow", slow_seconds=0.25)
    storescu(folder, fast.port, called_ae=fast.ae_title)
    storescu(folder, slow.port, called_ae=slow.ae_title)
    assert len(slow.received) == len(fast.received) == 8
    assert min(_gaps(slow)) >= 0.25 - 0.01  # a file time is a clock tick coarse
    assert min(_gaps(fast)) < 0.25


def test_http_500_fault_answers_the_manifest_with_500(simulated_vendor: Vendor) -> None:
    """With fault http-500, the manifest POST is answered 500."""
    vendor = simulated_vendor(http_port=free_port(), fault="http-500")
    answer = httpx.post(f"http://{LOOPBACK}:{vendor.http_port}/jobs", json={"job_id": 1})
    assert answer.status_code == 500


def test_never_answer_fault_accepts_and_stays_silent(simulated_vendor: Vendor) -> None:
    """With fault never-answer, the DICOM and HTTP ports accept TCP and send nothing."""
    vendor = simulated_vendor(http_port=free_port(), fault="never-answer")
    for port in (vendor.port, vendor.http_port):
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)


def test_wrong_study_uid_fault_files_the_result_under_another_study(
    tmp_path: Path, simulated_vendor: Vendor, orthanc: Orthanc
) -> None:
    """With fault wrong-study-uid, the SR that reaches Orthanc names another study."""
    folder, study_uid = _study(tmp_path)
    vendor = simulated_vendor(fault="wrong-study-uid", target=_to_orthanc(orthanc))
    storescu(folder, vendor.port, called_ae=vendor.ae_title)
    [delivered] = vendor.wait_delivered(1)
    assert delivered.ok and delivered.result_study_uid == other_study_uid(study_uid)
    tags = _tags(orthanc, str(delivered.sop_instance_uid))
    assert tags["StudyInstanceUID"] == other_study_uid(study_uid) != study_uid


class _Recorder:
    """A tiny HTTP server: records POSTs; serves one study as WADO-RS multipart on GET."""

    def __init__(self, files: list[Path] | None = None) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.gets: list[tuple[str, dict[str, str]]] = []
        recorder, parts = self, files or []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                recorder.posts.append((self.path, dict(self.headers), body))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                recorder.gets.append((self.path, dict(self.headers)))
                body = b"".join(
                    b"--B1\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
                    for p in parts
                )
                body += b"--B1--\r\n"
                self.send_response(200)
                self.send_header(
                    "Content-Type", 'multipart/related; type="application/dicom"; boundary=B1'
                )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_vendor_pulls_the_study_by_wado_and_posts_json_findings(
    tmp_path: Path, simulated_vendor: Vendor
) -> None:
    """A manifest makes the vendor pull the study with the job's token and POST valid findings."""
    files = generate_study("dx_chest", tmp_path / "cxr", rows=64, columns=64)
    study_uid = _uid(files[0])
    wado, callback = _Recorder(files), _Recorder()
    try:
        vendor = simulated_vendor(
            "chest-xray",
            http_port=free_port(),
            result="json",
            target=ResultsTarget(
                callback_url=callback.url + "/results/jobs/{job_id}/findings", token="s3cret"
            ),
        )
        manifest = {
            "job_id": 42,
            "study_instance_uid": study_uid,
            "wado_rs": wado.url + "/wado/jobs/42",
            "token": "job-token",
        }
        answer = httpx.post(f"http://{LOOPBACK}:{vendor.http_port}/jobs", json=manifest)
        assert answer.status_code == 202
        [delivered] = vendor.wait_delivered(1)
    finally:
        wado.close()
        callback.close()
    assert delivered.ok, delivered.detail
    [(path, headers)] = wado.gets
    assert path == f"/wado/jobs/42/studies/{study_uid}"
    assert headers["Authorization"] == "Bearer job-token"
    [(path, headers, body)] = callback.posts
    assert path == "/results/jobs/42/findings" and headers["Authorization"] == "Bearer s3cret"
    findings = parse_findings(body)
    assert findings.study_uid == study_uid and findings.urgent
    assert findings.findings[0].code.meaning == "Pneumothorax"
    assert len(vendor.received) == 0 and len(list((tmp_path).rglob("*.dcm"))) >= 4
