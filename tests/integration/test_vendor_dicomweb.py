"""DICOMweb (STOW-RS) vendor transport against Orthanc's DICOMweb plugin and scripted HTTP peers."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from pydicom.filereader import read_file_meta_info

from adapters.dicom.synthetic import encoding_variants, generate_large_study, generate_study
from adapters.vendors.base import VendorRejectedError, VendorUnavailableError
from adapters.vendors.dicom import DicomPushSettings
from adapters.vendors.dicomweb import DicomWebSettings, DicomWebTransport, parse_stow_response
from broker.model.errors import ConfigError
from broker.model.vendor import TRANSPORTS, is_retryable
from tests.jobs_data import sending_job
from tests.memory import PeakRss
from tests.peers import LOOPBACK, Orthanc, dataset_bytes, free_port

pytestmark = pytest.mark.xdist_group("vendor_dicomweb")

JOB = sending_job(7, "cxr", "1.2.3")


def _transport(url: str, **params: Any) -> DicomWebTransport:
    transport = DicomWebSettings.from_params("cxr", {"url": url, "timeout": 10, **params})
    assert isinstance(transport, DicomWebTransport)
    return transport


# ------------------------------------------------------------- scripted HTTP vendor


class HttpVendor:
    """A loopback HTTP server in a thread whose answer is scripted; it records each request.

    ``answer(handler, body)`` writes the reply; with ``answer=None`` the server
    reads the request and then never answers until the server is closed.
    """

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, bytes], None] | None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                vendor.requests.append((dict(self.headers.items()), body))
                if answer is None:
                    vendor.release.wait(30)
                    self.close_connection = True
                    return
                answer(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> HttpVendor:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def reply(
    status: int, body: bytes = b"", content_type: str = "application/dicom+json", **headers: str
) -> Callable[[BaseHTTPRequestHandler, bytes], None]:
    """An answer for :class:`HttpVendor`: this status, body and headers."""

    def answer(handler: BaseHTTPRequestHandler, _: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def _stow_json(failed: Sequence[tuple[str, int]] = (), stored: list[str] | None = None) -> bytes:
    answer: dict[str, Any] = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": [uid]},
                    "00081197": {"vr": "US", "Value": [reason]},
                }
                for uid, reason in failed
            ],
        }
    }
    if stored is not None:
        answer["00081199"] = {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored],
        }
    return json.dumps(answer).encode()


STOW_XML_FAILED = b"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID">
        <Value number="1">1.2.3.4</Value>
      </DicomAttribute>
      <DicomAttribute tag="00081197" vr="US" keyword="FailureReason">
        <Value number="1">49152</Value>
      </DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>
"""


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One Orthanc with the DICOMweb plugin for the module's tests."""
    with Orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        yield server


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six 64x64 CT slices."""
    out = tmp_path_factory.mktemp("study")
    return generate_study("ct_head", out, instances=6, rows=64, columns=64)


def _held_by(server: Orthanc, path: Path, out: Path) -> Path:
    """The file Orthanc holds for the SOP Instance UID of ``path``, written under ``out``."""
    uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
    found = [
        r for r in server.request("POST", "/tools/lookup", uid.encode()) if r["Type"] == "Instance"
    ]
    assert len(found) == 1, f"Orthanc holds {len(found)} instances with UID {uid} ({path.name})"
    held = out / f"{found[0]['ID']}.dcm"
    held.write_bytes(server.get(f"/instances/{found[0]['ID']}/file"))
    return held


# --------------------------------------------------------------------------- tests


def test_registered_under_its_name() -> None:
    """``dicomweb`` names this transport in the registry."""
    assert TRANSPORTS.get("dicomweb") is DicomWebSettings


def test_settings_keep_secrets_out_of_the_url() -> None:
    """A password in the URL, a user without one, or a non-HTTP URL fail with the field named."""
    with pytest.raises(ConfigError, match=r"transport\.url: .*the URL holds a password.*TOKEN"):
        _transport("https://bob:secret@ai.example/dicom-web")
    with pytest.raises(ConfigError, match=r"names user 'bob'.*RADBRIDGE_VENDORS__<NAME>__TRANS"):
        _transport("https://bob@ai.example/dicom-web")
    with pytest.raises(ConfigError, match=r"transport\.url: .*not an http\(s\) URL"):
        _transport("ftp://ai.example/dicom-web")
    transport = _transport("https://bob@ai.example:8443/dicom-web/", token="pw")
    assert transport.base_url == "https://ai.example:8443/dicom-web" and transport.user == "bob"


def test_stow_stores_every_instance_unchanged(
    orthanc: Orthanc, small_study: list[Path], tmp_path: Path
) -> None:
    """Every instance, compressed or not, reaches Orthanc with its UID and its dataset bytes."""
    files = small_study + [v.path for v in encoding_variants(tmp_path / "variants")]
    transport = _transport(orthanc.dicomweb_url, batch_bytes=100_000)
    outcome = transport.send(JOB, files)
    assert outcome.instances == len(files)
    assert outcome.bytes == sum(p.stat().st_size for p in files)
    requests = int(re.search(r"in (\d+) request", outcome.detail).group(1))  # type: ignore[union-attr]
    assert requests >= 5
    for path in files:
        held = _held_by(orthanc, path, tmp_path)
        assert dataset_bytes(held) == dataset_bytes(path), path.name


def test_dicom_push_to_orthanc_keeps_every_dataset_byte_for_byte(
    orthanc: Orthanc, small_study: list[Path], tmp_path: Path
) -> None:
    """The ``dicom`` transport (the lean sender) to the module's Orthanc, as a PACS-like
    receiver: every instance arrives with its dataset bytes as stored. Orthanc re-encodes
    two variants as it receives them over DICOM (it inflates a deflated data set and
    gives undefined-length sequences their lengths): those two keep their UIDs here,
    and storescp shows them sent byte for byte (test_vendors)."""
    variants = [v.path for v in encoding_variants(tmp_path / "variants")]
    reencoded = {"deflated_explicit_vr_le.dcm", "undefined_length_sequences.dcm"}
    files = small_study + variants
    for path in files:  # the STOW tests may have stored them: Orthanc would keep those copies
        uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
        for found in orthanc.request("POST", "/tools/lookup", uid.encode()):
            if found["Type"] == "Instance":
                orthanc.request("DELETE", f"/instances/{found['ID']}")
    settings = {"ae_title": "ORTHANC", "host": LOOPBACK, "port": orthanc.dicom_port, "timeout": 10}
    transport = DicomPushSettings.from_params("cxr", settings)
    outcome = transport.send(JOB, files)
    assert outcome.instances == len(files)
    assert "converted" not in outcome.detail
    differ = {
        p.name for p in files if dataset_bytes(_held_by(orthanc, p, tmp_path)) != dataset_bytes(p)
    }
    assert differ == reencoded


def test_request_is_multipart_related_with_bearer_token(small_study: list[Path]) -> None:
    """Each request is multipart/related of whole Part 10 files, sized up front, with the token."""
    uids = [str(read_file_meta_info(p).MediaStorageSOPInstanceUID) for p in small_study]
    with HttpVendor(reply(200, _stow_json(stored=uids))) as vendor:
        size = max(p.stat().st_size for p in small_study)
        transport = _transport(vendor.url, token="t0k3n", batch_bytes=2 * size)
        transport.send(JOB, small_study)
    assert len(vendor.requests) == 3
    parts = []
    for headers, body in vendor.requests:
        assert headers["Authorization"] == "Bearer t0k3n"
        assert "Transfer-Encoding" not in headers
        media, boundary = headers["Content-Type"].split("; boundary=")
        assert media == 'multipart/related; type="application/dicom"'
        chunks = body.split(f"--{boundary}".encode())
        assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
        for chunk in chunks[1:-1]:
            head, data = chunk.split(b"\r\n\r\n", 1)
            assert head == b"\r\nContent-Type: application/dicom"
            parts.append(data.removesuffix(b"\r\n"))
    assert parts == [p.read_bytes() for p in small_study]


def test_wrong_password_is_rejected_right_one_delivers(
    small_study: list[Path], tmp_path: Path
) -> None:
    """Orthanc with users: a wrong password is a 401 the job dies of; the right one delivers."""
    config = {"AuthenticationEnabled": True, "RegisteredUsers": {"radbridge": "right"}}
    with Orthanc(tmp_path / "orthanc", dicomweb=True, config=config) as server:
        url = server.dicomweb_url.replace("http://", "http://radbridge@")
        wrong = _transport(url, token="wrong")
        with pytest.raises(VendorRejectedError, match=r"answered 401.*check the credentials") as e:
            wrong.send(JOB, small_study)
        assert not is_retryable(wrong, e.value)
        assert server.instances() == []
        outcome = _transport(url, token="right").send(JOB, small_study)
        assert outcome.instances == len(small_study) == len(server.instances())


def test_nothing_listening_is_retryable(small_study: list[Path]) -> None:
    """A vendor that is down gives a retryable error naming the URL."""
    transport = _transport(f"http://{LOOPBACK}:{free_port()}/dicom-web")
    with pytest.raises(VendorUnavailableError, match=r"STOW-RS to http://127\.0\.0\.1:\d+/") as e:
        transport.send(JOB, small_study)
    assert is_retryable(transport, e.value)


@pytest.mark.parametrize(
    ("answer", "retryable", "message"),
    [
        (reply(500, b"boom", "text/plain"), True, r"answered 500"),
        (reply(503, Retry_After="30"), True, r"answered 503 .*Retry-After: 30"),
        (reply(429), True, r"answered 429"),
        (reply(408), True, r"answered 408"),
        (reply(409, _stow_json([("1.2.3.4", 0xA900)])), False, r"409.*1\.2\.3\.4 .*0xA900"),
        (reply(400), False, r"answered 400"),
        (reply(415), False, r"answered 415"),
        (reply(302, Location="https://elsewhere/"), False, r"302 .*https://elsewhere/"),
        (reply(200, _stow_json([("1.2.3.4", 0xC000)])), False, r"1 of 6 failed.*0xC000"),
        (reply(200, _stow_json([("1.2.3.4", 0xA700)])), True, r"1 of 6 failed.*0xA700"),
        (reply(202, STOW_XML_FAILED, "application/dicom+xml"), False, r"0xC000"),
        (reply(200, _stow_json(stored=["1.2.3.4"])), True, r"lacks 6 of the 6"),
    ],
    ids=[
        "500",
        "503",
        "429",
        "408",
        "409",
        "400",
        "415",
        "redirect",
        "failed-cannot-understand",
        "failed-out-of-resources",
        "failed-xml",
        "not-referenced",
    ],
)
def test_http_answers_map_to_retry_or_reject(
    small_study: list[Path],
    answer: Callable[[BaseHTTPRequestHandler, bytes], None],
    retryable: bool,
    message: str,
) -> None:
    """408, 429, 5xx and transient FailureReasons retry; other 4xx and failures reject."""
    with HttpVendor(answer) as vendor:
        transport = _transport(vendor.url)
        with pytest.raises((VendorRejectedError, VendorUnavailableError), match=message) as e:
            transport.send(JOB, small_study)
    assert is_retryable(transport, e.value) is retryable


def test_vendor_that_never_answers_times_out_retryably(small_study: list[Path]) -> None:
    """A vendor that takes the request and never answers is a retryable timeout."""
    with HttpVendor(None) as vendor:
        transport = _transport(vendor.url, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(VendorUnavailableError, match=r"timed out after 0\.5 s") as e:
            transport.send(JOB, small_study)
        assert time.monotonic() - started < 5
    assert is_retryable(transport, e.value)


def test_response_parser_reads_json_and_xml_and_refuses_doctype() -> None:
    """FailedSOPSequence and ReferencedSOPSequence come out of DICOM JSON and XML alike."""
    assert parse_stow_response(
        "application/dicom+json", _stow_json([("9.9", 0x0110)], stored=["1.1"])
    ) == ([("9.9", 0x0110)], {"1.1"})
    assert parse_stow_response("application/dicom+xml", STOW_XML_FAILED) == (
        [("1.2.3.4", 0xC000)],
        None,
    )
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    assert parse_stow_response("application/dicom+xml", bomb) is None
    assert parse_stow_response("application/dicom+json", b"") is None


@pytest.mark.slow
def test_large_study_is_streamed_not_buffered(orthanc: Orthanc, tmp_path: Path) -> None:
    """STOWing a ~300 MB study grows this process's RSS by far less than one batch."""
    files = generate_large_study(tmp_path / "large", 300_000_000, instance_bytes=32 * 1024 * 1024)
    total = sum(p.stat().st_size for p in files)
    transport = _transport(orthanc.dicomweb_url, batch_bytes=128 * 1024 * 1024, timeout=60)
    with PeakRss() as rss:
        outcome = transport.send(JOB, files)
    growth = rss.growth
    assert outcome.bytes == total > 290_000_000
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 2**20:.0f} MiB for {total / 2**20:.0f}"
    for path in files[:: len(files) - 1]:
        assert dataset_bytes(_held_by(orthanc, path, tmp_path)) == dataset_bytes(path)
