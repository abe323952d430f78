"""The simulated AI vendor: takes studies by DICOM or HTTP, returns results after a delay.

Receiving:

- **DICOM**: a storage SCP (every storage SOP class and transfer syntax) at
  ``ae_title``/``port``; each study received on an association is evaluated
  when that association is released.
- **HTTP** (``http_port``): the vendor API of radbridge's ``http``
  transport. ``POST`` any path with radbridge's JSON manifest
  (:mod:`adapters.vendors.http`) answers ``202``; the vendor then pulls
  ``GET {wado_rs}/studies/{study_instance_uid}`` with ``Authorization:
  Bearer {token}`` (multipart/related, one Part 10 file per part), then each
  prior the manifest lists from its own ``wado_rs`` URL (``priors_pulled``), and
  evaluates the current study. ``GET /health`` answers 200. ``DELETE …/{job_id}``
  (radbridge's cancellation of a job) is recorded in ``cancellations`` and answered 200.

Returning, ``delay`` seconds after the study is in (:class:`ResultType`):

- ``sr`` (TID 1500 Comprehensive SR), ``seg`` (binary SEG) or ``sc``
  (secondary capture key image) by C-STORE to the results AE
  (:class:`ResultsTarget` ``ae_title``/``host``/``port``: radbridge's
  ``results`` AE title, or any PACS);
- ``json``: the findings document ``POST``ed to ``callback_url`` with
  ``Authorization: Bearer {token}``; ``{job_id}`` and ``{study_uid}`` in
  the URL are filled in (the job id comes from the manifest; DICOM-received
  studies have none).

Fault modes (:class:`Fault`): ``refuse`` (every association rejected,
reason 3 "calling AE title not recognized"), ``abort`` (A-ABORT after
``abort_after`` instances), ``slow`` (``slow_seconds`` per instance received
or pulled), ``http-500`` (the manifest POST is answered 500), ``never-answer``
(both ports accept TCP connections and never send a byte), and
``wrong-study-uid`` (results carry another Study Instance UID).

``findings`` (finding code → ``present`` | ``absent``) makes the vendor disagree with
another of its kind on a code (:mod:`adapters.harness.products`), in its SR and its JSON
findings alike; SEG and SC objects are unchanged.
"""

from __future__ import annotations

import enum
import functools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.status import Status
from pynetdicom.transport import ThreadedAssociationServer

from adapters.dicom_status import StoreFailure
from adapters.harness.errors import HarnessError
from adapters.harness.modality import send_files
from adapters.harness.process import LOOPBACK, free_port
from adapters.harness.products import (
    Presence,
    ProductKind,
    findings_document,
    make_sc,
    make_seg,
    make_sr,
    other_study_uid,
)
from adapters.harness.storage import Received, file_received, storage_contexts
from adapters.results.sr import SourceStudy
from broker.model.errors import ResultError

#: A calling AE title no sender uses: requiring it refuses every association.
_NOBODY = "RB-REFUSE-ALL"


class Fault(enum.StrEnum):
    NONE = "none"
    REFUSE = "refuse"
    ABORT = "abort"
    SLOW = "slow"
    HTTP_500 = "http-500"
    NEVER_ANSWER = "never-answer"
    WRONG_STUDY_UID = "wrong-study-uid"


class ResultType(enum.StrEnum):
    SR = "sr"
    SEG = "seg"
    SC = "sc"
    JSON = "json"


@dataclass(frozen=True)
class ResultsTarget:
    """Where results go: a DICOM AE (SR, SEG, SC) and/or an HTTP callback (JSON)."""

    ae_title: str | None = None
    host: str = LOOPBACK
    port: int | None = None
    callback_url: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Delivered:
    """One result the vendor sent, or tried to."""

    study_uid: str
    """The study that was evaluated."""
    result_study_uid: str
    """The Study Instance UID the result carries (another one under ``wrong-study-uid``)."""
    result: ResultType
    target: str
    ok: bool
    detail: str
    job_id: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class _Incoming:
    paths: list[Path] = field(default_factory=list)
    count: int = 0


class _BlackHole:
    """Accepts TCP connections on a port and never sends a byte (``never-answer``)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port))
        self.open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True, name="black-hole")
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related`` body (their contents, headers dropped)."""
    boundary = None
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise HarnessError(f"no boundary in Content-Type {content_type!r}")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


class SimulatedVendor:
    """An AI product of ``product`` kind that takes studies and returns results (see module)."""

    def __init__(
        self,
        product: ProductKind | str,
        folder: Path | str,
        *,
        ae_title: str = "AIVENDOR",
        host: str = LOOPBACK,
        port: int | None = None,
        http_port: int | None = None,
        delay: float = 1.0,
        result: ResultType | str = ResultType.SR,
        target: ResultsTarget | None = None,
        fault: Fault | str = Fault.NONE,
        slow_seconds: float = 0.5,
        abort_after: int = 1,
        on_event: Callable[[str], None] | None = None,
        findings: Mapping[str, Presence | str] | None = None,
    ) -> None:
        self.product = ProductKind(product)
        self.findings = {code: Presence(told) for code, told in (findings or {}).items()}
        self.folder = Path(folder).resolve()
        self.ae_title = ae_title
        self.host = host
        self.port = port or free_port(host)
        self.http_port = http_port
        self.delay = delay
        self.result = ResultType(result)
        self.target = target or ResultsTarget()
        self.fault = Fault(fault)
        self.slow_seconds = slow_seconds
        self.abort_after = abort_after
        self.on_event = on_event or (lambda _text: None)
        self.received: list[Received] = []
        self.manifests: list[dict[str, Any]] = []
        self.cancellations: list[dict[str, Any]] = []
        """Each cancellation radbridge sent (``DELETE …/{job_id}``): its path and body."""
        self.priors_pulled: dict[str, int | str] = {}
        """Study UID of each prior a manifest listed → instances pulled (or why none)."""
        self.delivered: list[Delivered] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._incoming: dict[int, _Incoming] = {}
        self._dicom: ThreadedAssociationServer | None = None
        self._http: ThreadingHTTPServer | None = None
        self._holes: list[_BlackHole] = []
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.fault is Fault.NEVER_ANSWER:
            self._holes.append(_BlackHole(self.host, self.port))
            if self.http_port:
                self._holes.append(_BlackHole(self.host, self.http_port))
            return self
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = False
        ae.supported_contexts = storage_contexts()
        ae.maximum_associations = 32
        if self.fault is Fault.REFUSE:
            ae.require_calling_aet = [_NOBODY]
        self._dicom = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_RELEASED, self._on_released),
            ],
        )
        if self.http_port:
            self._http = ThreadingHTTPServer((self.host, self.http_port), self._http_handler())
            self._http.daemon_threads = True
            self._spawn(self._http.serve_forever, "vendor-http")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._dicom is not None:
            self._dicom.shutdown()
            self._dicom = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        for hole in self._holes:
            hole.close()
        self._holes = []
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def wait_delivered(self, count: int = 1, timeout: float = 30.0) -> list[Delivered]:
        """Block until ``count`` results were sent (or tried); all of them so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.delivered) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self.delivered)} of {count} results delivered in {timeout} s"
                    )
                self._changed.wait(remaining)
            return list(self.delivered)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---------------------------------------------------------------- DICOM

    def _on_store(self, event: evt.Event) -> int:
        key = id(event.assoc)
        with self._lock:
            incoming = self._incoming.setdefault(key, _Incoming())
            incoming.count += 1
            count = incoming.count
        if self.fault is Fault.ABORT and count >= self.abort_after:
            self.on_event(f"aborting the association after {count} instance(s) (fault: abort)")
            event.assoc.abort()
            return StoreFailure.OUT_OF_RESOURCES
        if self.fault is Fault.SLOW:
            time.sleep(self.slow_seconds)
        try:
            received = file_received(event, self.folder)
        except (OSError, TypeError, InvalidDicomError):
            return StoreFailure.OUT_OF_RESOURCES
        with self._lock:
            incoming.paths.append(received.path)
            self.received.append(received)
        return Status.SUCCESS

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            incoming = self._incoming.pop(id(event.assoc), None)
        if incoming is None or not incoming.paths:
            return
        by_study: dict[str, list[Path]] = {}
        for path in incoming.paths:
            by_study.setdefault(path.parent.parent.name, []).append(path)
        for study_uid, paths in by_study.items():
            self.on_event(f"received {len(paths)} instance(s) of study {study_uid}")
            self._spawn(functools.partial(self._deliver, study_uid, paths, None), "vendor-result")

    # ----------------------------------------------------------------- HTTP

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    self._answer(200, {"status": "ok", "product": vendor.product.value})
                else:
                    self._answer(404, {"error": f"no such resource {self.path}"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if vendor.fault is Fault.HTTP_500:
                    vendor.on_event("manifest answered 500 (fault: http-500)")
                    self._answer(500, {"error": "simulated internal server error"})
                    return
                try:
                    manifest = json.loads(body)
                    study_uid = str(manifest["study_instance_uid"])
                    missing = [k for k in ("wado_rs", "token") if k not in manifest]
                    if missing:
                        raise KeyError(", ".join(missing))
                except (ValueError, KeyError, TypeError) as exc:
                    self._answer(400, {"error": f"not a radbridge manifest: {exc}"})
                    return
                with vendor._lock:
                    vendor.manifests.append(manifest)
                vendor.on_event(f"manifest for job {manifest.get('job_id')} (study {study_uid})")
                self._answer(202, {"status": "accepted", "job_id": manifest.get("job_id")})
                vendor._spawn(lambda: vendor._pull_and_deliver(manifest), "vendor-pull")

            def do_DELETE(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError as exc:
                    self._answer(400, {"error": f"not JSON: {exc}"})
                    return
                job_id = self.path.rstrip("/").rpartition("/")[2]
                if not job_id.isdigit():
                    self._answer(404, {"error": f"no such resource {self.path}"})
                    return
                with vendor._lock:
                    vendor.cancellations.append({"path": self.path, "body": body})
                vendor.on_event(f"job {job_id} cancelled by radbridge ({body.get('reason')})")
                self._answer(200, {"status": "cancelled", "job_id": job_id})

            def log_message(self, *_args: Any) -> None:
                return

        return Handler

    def _pull(self, url: str, token: str) -> list[Path] | str:
        """GET ``url`` (WADO-RS, multipart) with the job's token; the files kept, or why not."""
        try:
            answer = httpx.get(
                url,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": 'multipart/related; type="application/dicom"',
                },
                timeout=60,
            )
        except httpx.HTTPError as exc:
            return f"pull failed: {exc}"
        if answer.status_code != 200:
            return f"pull answered {answer.status_code}: {answer.text[:200]}"
        paths = []
        incoming = self.folder / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        for n, part in enumerate(parse_multipart(answer.headers["content-type"], answer.content)):
            if self.fault is Fault.SLOW:
                time.sleep(self.slow_seconds)
            tmp = incoming / f"{uuid.uuid4().hex}-{n}.dcm"
            tmp.write_bytes(part)
            ds = dcmread(tmp, stop_before_pixels=True)
            path = self.folder / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
            path.mkdir(parents=True, exist_ok=True)
            path = path / f"{ds.SOPInstanceUID}.dcm"
            tmp.replace(path)
            paths.append(path)
        return paths

    def _pull_and_deliver(self, manifest: dict[str, Any]) -> None:
        study_uid = str(manifest["study_instance_uid"])
        job_id = str(manifest["job_id"]) if manifest.get("job_id") is not None else None
        url = f"{str(manifest['wado_rs']).rstrip('/')}/studies/{study_uid}"
        token = str(manifest["token"])
        paths = self._pull(url, token)
        if isinstance(paths, str):
            self._record(Delivered(study_uid, study_uid, self.result, url, False, paths, job_id))
            return
        self.on_event(f"pulled {len(paths)} instance(s) of study {study_uid} for job {job_id}")
        for prior in manifest.get("priors") or []:
            got = self._pull(str(prior["wado_rs"]), token)
            uid = str(prior["study_instance_uid"])
            with self._lock:
                self.priors_pulled[uid] = len(got) if isinstance(got, list) else got
            self.on_event(f"prior {uid} for job {job_id}: {self.priors_pulled[uid]}")
        self._deliver(study_uid, paths, job_id)

    # -------------------------------------------------------------- results

    def _record(self, delivered: Delivered) -> None:
        with self._changed:
            self.delivered.append(delivered)
            self._changed.notify_all()
        state = "sent" if delivered.ok else "NOT sent"
        self.on_event(
            f"{delivered.result.value} result for study {delivered.study_uid} {state} to "
            f"{delivered.target}: {delivered.detail}"
        )

    def _deliver(self, study_uid: str, paths: list[Path], job_id: str | None) -> None:
        if self._stopping.wait(self.delay):
            return
        wrong = other_study_uid(study_uid) if self.fault is Fault.WRONG_STUDY_UID else None
        result_study = wrong or study_uid
        try:
            pixels = self.result in (ResultType.SEG, ResultType.SC)
            # the SR's image region needs the key image's size: headers are enough
            datasets: list[Dataset] = [dcmread(p, stop_before_pixels=not pixels) for p in paths]
            source = SourceStudy.from_datasets(datasets)
        except (OSError, InvalidDicomError, ResultError) as exc:
            self._record(
                Delivered(study_uid, result_study, self.result, "-", False, str(exc), job_id)
            )
            return
        if self.result is ResultType.JSON:
            self._post_findings(source, study_uid, result_study, job_id)
            return
        try:
            ds = self._object(source, datasets, job_id, wrong)
        except (ValueError, TypeError, ResultError) as exc:
            detail = f"cannot build the {self.result.value}: {exc}"
            self._record(
                Delivered(study_uid, result_study, self.result, "-", False, detail, job_id)
            )
            return
        out = self.folder / ".results" / f"{ds.SOPInstanceUID}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)
        target = self.target
        if target.ae_title is None or target.port is None:
            self._record(
                Delivered(
                    study_uid,
                    result_study,
                    self.result,
                    "-",
                    False,
                    f"no results AE given; kept in {out}",
                    job_id,
                    str(ds.SOPInstanceUID),
                )
            )
            return
        where = f"{target.ae_title}@{target.host}:{target.port}"
        report = send_files(
            [out],
            host=target.host,
            port=target.port,
            called_ae=target.ae_title,
            calling_ae=self.ae_title,
        )
        detail = "stored" if report.ok else "; ".join(f.reason for f in report.failures)
        self._record(
            Delivered(
                study_uid,
                result_study,
                self.result,
                where,
                report.ok,
                detail,
                job_id,
                str(ds.SOPInstanceUID),
            )
        )

    def _object(
        self, source: SourceStudy, datasets: list[Dataset], job_id: str | None, wrong: str | None
    ) -> Dataset:
        if self.result is ResultType.SEG:
            return make_seg(self.product, source, datasets, study_uid=wrong)
        if self.result is ResultType.SC:
            return make_sc(self.product, source, datasets, study_uid=wrong)
        result_id = f"harness/{self.product.value}/{job_id or uuid.uuid4().hex}"
        return make_sr(
            self.product,
            source,
            result_id=result_id,
            study_uid=wrong,
            images=datasets,
            overrides=self.findings,
        )

    def _post_findings(
        self, source: SourceStudy, study_uid: str, result_study: str, job_id: str | None
    ) -> None:
        target = self.target
        if target.callback_url is None:
            detail = "no callback URL given"
            self._record(
                Delivered(study_uid, result_study, self.result, "-", False, detail, job_id)
            )
            return
        url = target.callback_url.replace("{job_id}", job_id or "").replace(
            "{study_uid}", study_uid
        )
        document = findings_document(
            self.product, source, study_uid=result_study, overrides=self.findings
        )
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        try:
            answer = httpx.post(url, json=document, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            self._record(
                Delivered(study_uid, result_study, self.result, url, False, str(exc), job_id)
            )
            return
        ok = 200 <= answer.status_code < 300
        detail = f"HTTP {answer.status_code}" + ("" if ok else f": {answer.text[:300]}")
        self._record(Delivered(study_uid, result_study, self.result, url, ok, detail, job_id))
