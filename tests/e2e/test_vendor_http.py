"""The ``http`` vendor transport against real loopback HTTP vendors that pull by WADO-RS."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.filereader import read_file_meta_info

from adapters.dicom.synthetic import generate_study
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from adapters.vendors.http import (
    HttpRejectedError,
    HttpSettings,
    HttpTransport,
    HttpUnavailableError,
)
from broker.model.errors import ConfigError
from broker.model.jobs import Job, JobState
from broker.model.vendor import TRANSPORTS, TransportContext, is_retryable
from broker.store import StudyStore
from config.schema import Settings
from tests.integration.test_wado import DICOM_ACCEPT, WadoStack, parse_multipart, wado, write_parts
from tests.peers import LOOPBACK, dataset_bytes, free_port, storescu
from tests.service import Radbridge, base_config

__all__ = ["wado"]  # the fixture, shared with tests/integration/test_wado.py

S = JobState
API_SECRET = "vendor-api-secret"


class HttpVendor:
    """A loopback AI vendor API in a thread: takes the manifest, answers, then pulls the study.

    ``status`` is the answer to the POST (``None``: read the request, never
    answer). With ``pull`` the vendor fetches the study from the manifest's
    WADO-RS URL with its token right after answering, as a real one would.
    """

    def __init__(self, status: int | None = 200, *, pull: bool = True) -> None:
        self.manifests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.pulled: list[httpx.Response] = []
        self.done = threading.Event()
        self.release = threading.Event()
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                manifest = json.loads(body)
                vendor.manifests.append((dict(self.headers.items()), manifest))
                if status is None:
                    vendor.release.wait(30)
                    return
                reply = json.dumps({"accepted": status < 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                self.wfile.flush()
                if pull and status < 300:
                    vendor.pull(manifest)
                vendor.done.set()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/api/jobs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def pull(self, manifest: dict[str, Any]) -> None:
        """GET the study from the manifest's WADO-RS URL with its token."""
        url = f"{manifest['wado_rs']}/studies/{manifest['study_instance_uid']}"
        headers = {"Authorization": f"Bearer {manifest['token']}", "Accept": DICOM_ACCEPT}
        self.pulled.append(httpx.get(url, headers=headers, timeout=10))

    def __enter__(self) -> HttpVendor:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vendor_factory() -> Iterator[Callable[..., HttpVendor]]:
    """Start scripted HTTP vendors; all are stopped at the end."""
    started: list[HttpVendor] = []

    def make(status: int | None = 200, *, pull: bool = True) -> HttpVendor:
        started.append(HttpVendor(status, pull=pull).__enter__())
        return started[-1]

    yield make
    for vendor in started:
        vendor.__exit__()


def _context(wado: WadoStack) -> TransportContext:
    """What ``radbridge serve`` tells the transport: its public URL, the store, the product."""
    return TransportContext(
        "lungai",
        product="CT lung nodule",
        result_timeout=600,
        public_url=wado.base_url,
        database_url=str(wado.engine.url),
    )


def _transport(wado: WadoStack, url: str, **params: Any) -> HttpTransport:
    settings = {"url": url, "token": API_SECRET, "timeout": 10, **params}
    transport = TRANSPORTS.get("http").from_params("lungai", settings, _context(wado))
    assert isinstance(transport, HttpTransport)
    return transport


def _files(wado: WadoStack, job: Job) -> list[Path]:
    return [Path(p) for p in StudyStore(wado.engine).instance_paths(job.study_uid, job.series_uids)]


def test_vendor_gets_the_manifest_and_pulls_the_study_intact(
    wado: WadoStack, vendor_factory: Callable[..., HttpVendor]
) -> None:
    """200: the manifest names the job's series; the vendor's pull is the spool, byte for byte."""
    study, files = wado.study()
    chosen = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    wanted = [f for f in files if f.parent.name == files[0].parent.name]
    job = wado.sending_job(study, vendor="lungai", series=(chosen,))
    vendor = vendor_factory(200)
    outcome = _transport(wado, vendor.url).send(job, _files(wado, job))
    wado.jobs.finish(job.id, [S.SENT, S.AWAITING_RESULT])
    assert outcome.instances == len(wanted) and outcome.bytes == sum(
        f.stat().st_size for f in wanted
    )
    assert vendor.done.wait(15)
    [(headers, manifest)] = vendor.manifests
    assert headers["Authorization"] == f"Bearer {API_SECRET}"
    assert headers["Content-Type"] == "application/json"
    assert manifest["job_id"] == job.id and manifest["vendor"] == "lungai"
    assert manifest["product"] == "CT lung nodule" and manifest["priority"] == "routine"
    assert manifest["study_instance_uid"] == study and manifest["accession_number"] == "ACC0001"
    assert manifest["series"] == [
        {"series_instance_uid": chosen, "modality": "MR", "instances": len(wanted)}
    ]
    assert "patient" not in manifest
    assert manifest["wado_rs"] == f"{wado.base_url}/wado/jobs/{job.id}"
    assert manifest["token"] != API_SECRET and manifest["token_expires_at"]
    [pulled] = vendor.pulled
    assert pulled.status_code == 200, pulled.text
    parts = parse_multipart(pulled.headers["content-type"], pulled.content)
    got = write_parts(parts, wado.tmp / "vendor")
    assert sorted(dataset_bytes(p) for p in got) == sorted(dataset_bytes(f) for f in wanted)
    sops = {str(read_file_meta_info(p).MediaStorageSOPInstanceUID) for p in got}
    assert sops == {str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in wanted}
    wado.jobs.cancel(job.id)
    url = f"{manifest['wado_rs']}/studies/{study}"
    after = httpx.get(url, headers={"Authorization": f"Bearer {manifest['token']}"})
    assert after.status_code == 401


def test_patient_goes_in_the_manifest_only_when_configured(
    wado: WadoStack, vendor_factory: Callable[..., HttpVendor]
) -> None:
    """``send_patient: true`` adds the patient ID and issuer; 202 counts as accepted."""
    study, _ = wado.study()
    job = wado.sending_job(study, vendor="lungai")
    vendor = vendor_factory(202, pull=False)
    _transport(wado, vendor.url, send_patient=True).send(job, _files(wado, job))
    [(_, manifest)] = vendor.manifests
    assert manifest["patient"] == {"id": "PAT0001", "issuer": "EXAMPLE-GH"}


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (408, True), (429, True), (400, False), (401, False), (404, False)],
)
def test_vendor_answers_map_to_retry_or_reject(
    wado: WadoStack, vendor_factory: Callable[..., HttpVendor], status: int, retryable: bool
) -> None:
    """5xx, 408 and 429 retry; other 4xx make the job dead; the token stops with the attempt."""
    study, _ = wado.study()
    job = wado.sending_job(study, vendor="lungai")
    vendor = vendor_factory(status)
    transport = _transport(wado, vendor.url)
    error = HttpUnavailableError if retryable else HttpRejectedError
    with pytest.raises(error, match=rf"POST {vendor.url} answered {status}") as raised:
        transport.send(job, _files(wado, job))
    assert is_retryable(transport, raised.value) is retryable
    assert isinstance(raised.value, VendorUnavailableError if retryable else VendorRejectedError)
    [(_, manifest)] = vendor.manifests
    wado.jobs.finish(job.id, [S.FAILED if retryable else S.DEAD])
    refused = wado.get(manifest["token"], job.id, "studies", study)
    assert refused.status_code == 401


def test_vendor_that_never_answers_times_out_and_retries(
    wado: WadoStack, vendor_factory: Callable[..., HttpVendor]
) -> None:
    """A vendor that reads the manifest and never answers is a retryable timeout."""
    study, _ = wado.study()
    job = wado.sending_job(study, vendor="lungai")
    vendor = vendor_factory(None)
    transport = _transport(wado, vendor.url, timeout=1)
    started = time.monotonic()
    with pytest.raises(HttpUnavailableError, match=r"timed out after 1 s") as raised:
        transport.send(job, _files(wado, job))
    assert time.monotonic() - started < 5
    assert is_retryable(transport, raised.value)


def test_vendor_that_is_down_is_retryable(wado: WadoStack) -> None:
    """Connection refused is a retryable error naming the URL."""
    study, _ = wado.study()
    job = wado.sending_job(study, vendor="lungai")
    transport = _transport(wado, f"http://{LOOPBACK}:{free_port()}/api")
    with pytest.raises(HttpUnavailableError, match=r"POST http://127\.0\.0\.1:\d+/api failed"):
        transport.send(job, _files(wado, job))


def test_redirect_is_not_followed(wado: WadoStack) -> None:
    """A redirect is refused for good and names where it pointed."""

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(302)
            self.send_header("Location", "https://elsewhere.example/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        study, _ = wado.study()
        job = wado.sending_job(study, vendor="lungai")
        transport = _transport(wado, f"http://{LOOPBACK}:{server.server_address[1]}/")
        with pytest.raises(HttpRejectedError, match=r"302 .*elsewhere\.example"):
            transport.send(job, _files(wado, job))
    finally:
        server.shutdown()
        server.server_close()


def test_settings_are_validated_and_filled_from_the_configuration(tmp_path: Path) -> None:
    """Bad URLs fail loudly; a configured http vendor gets the public URL, store and TTL."""
    with pytest.raises(ConfigError, match=r"vendors\.lungai\.transport\.url: .*not an http"):
        HttpSettings.from_params("lungai", {"url": "ftp://x"})
    with pytest.raises(ConfigError, match=r"keeps job tokens in the store"):
        HttpSettings.from_params("lungai", {"url": "http://x"})
    settings = Settings.model_validate(
        {
            "storage": {"database": f"sqlite:///{tmp_path}/rb.db"},
            "http": {"listen": {"port": 8443}, "public_url": "https://rb.example/"},
            "vendors": {
                "lungai": {
                    "product": "CT lung nodule",
                    "timeout": "20m",
                    "transport": {"type": "http", "url": "https://ai.example/jobs"},
                }
            },
        }
    )
    context = settings.transport_context("lungai")
    transport = settings.vendors["lungai"].transport.build(context)
    assert isinstance(transport, HttpTransport)
    assert transport.context.public_url == "https://rb.example"
    assert context.result_timeout == 1200 and context.product == "CT lung nodule"
    assert context.database_url == f"sqlite:///{tmp_path}/rb.db"
    assert "rb.db" not in repr(context)
    assert settings.vendors["lungai"].transport.endpoint() == ("ai.example", 443)
    default = Settings.model_validate(
        {"vendors": {"x": {"product": "p", "transport": {"type": "http", "url": "http://a"}}}}
    )
    assert default.http_server_wanted()
    assert default.transport_context("x").public_url == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match="send_patient is not used by the dicom transport"):
        Settings.model_validate(
            {
                "vendors": {
                    "x": {
                        "product": "p",
                        "transport": {
                            "type": "dicom",
                            "ae_title": "X",
                            "host": "h",
                            "port": 104,
                            "send_patient": True,
                        },
                    }
                }
            }
        )


def test_cancel_revokes_the_jobs_token(
    wado: WadoStack, vendor_factory: Callable[..., HttpVendor]
) -> None:
    """A cancelled job's study can no longer be pulled: ``cancel`` revokes its token (this
    vendor's API has no cancellation, 501, which ends the cancel all the same)."""
    study, _ = wado.study()
    job = wado.sending_job(study, vendor="lungai")
    vendor = vendor_factory(200, pull=False)
    transport = _transport(wado, vendor.url)
    transport.send(job, _files(wado, job))
    [(_, manifest)] = vendor.manifests
    assert wado.get(manifest["token"], job.id, "studies", study).status_code == 200
    assert transport.cancel(job) is True
    assert wado.get(manifest["token"], job.id, "studies", study).status_code == 401


@pytest.mark.timeout(180)
def test_end_to_end_through_radbridge_serve(
    tmp_path: Path, vendor_factory: Callable[..., HttpVendor]
) -> None:
    """storescu → radbridge serve → manifest to the vendor → the vendor pulls the CT intact."""
    vendor = vendor_factory(200)
    config = base_config(tmp_path / "rb", free_port())
    http_port = free_port()
    config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
    config["vendors"] = {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {"type": "http", "url": vendor.url, "timeout": 10},
            "retries": 2,
        }
    }
    config["routes"] = [
        {"name": "chest-ct", "when": {"modality": "CT"}, "send": ["lungai"], "series": "all"}
    ]
    config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
    rb = Radbridge(tmp_path / "rb", config)
    rb.env["RADBRIDGE_VENDORS__LUNGAI__TRANSPORT__TOKEN"] = API_SECRET
    ct = generate_study("ct_chest", tmp_path / "ct", instances=6, rows=64, columns=64)
    try:
        rb.start()
        storescu(ct, rb.port)
        assert vendor.done.wait(60), rb.log_path.read_text()
        [(headers, manifest)] = vendor.manifests
        assert headers["Authorization"] == f"Bearer {API_SECRET}"
        assert manifest["wado_rs"].startswith(f"http://{LOOPBACK}:{http_port}/wado/jobs/")
        [pulled] = vendor.pulled
        assert pulled.status_code == 200, pulled.text
        parts = parse_multipart(pulled.headers["content-type"], pulled.content)
        got = write_parts(parts, tmp_path / "vendor")
        assert sorted(dataset_bytes(p) for p in got) == sorted(dataset_bytes(f) for f in ct)
        deadline = time.monotonic() + 30
        while json.loads(rb.cli("jobs", "list", "--json").stdout)[0]["state"] != (
            "awaiting_result"
        ):
            assert time.monotonic() < deadline, rb.log_path.read_text()
            time.sleep(0.2)
        job_id = manifest["job_id"]
        rb.cli("jobs", "cancel", str(job_id))
        url = f"{manifest['wado_rs']}/studies/{manifest['study_instance_uid']}"
        after = httpx.get(url, headers={"Authorization": f"Bearer {manifest['token']}"})
        assert after.status_code == 401
    finally:
        rb.close()
