"""The real peer of every registered vendor transport and write-back target type.

The contract suites run each registered plugin against its kit: a peer that
takes what is sent (``accepting``), one that refuses it for good
(``rejecting``), and an address where nothing listens (``down``). Each peer
says what it holds (``held``: the identifiers a receiver can tell a repeat
by: SOP Instance UIDs, job ids, message control IDs, idempotency keys).

A plugin registered without a kit here fails the suites: add its kit to
:data:`TRANSPORT_KITS` or :data:`TARGET_KITS`.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydicom.filereader import read_file_meta_info

from adapters.dicom_status import StoreFailure
from broker.model.jobs import Job
from broker.model.vendor import TransportContext
from tests.fhir_receiver import FhirReceiver, Webhook
from tests.integration.test_wado import DICOM_ACCEPT, WadoStack
from tests.link import HubStack, hub_stack
from tests.peers import LOOPBACK, Orthanc, StoreSCP, free_port
from tests.ris import Ris
from tests.scripted_scp import ScriptedStoreSCP

#: A C-STORE failure no retry changes.
REFUSED_STATUS = StoreFailure.DATASET_DOES_NOT_MATCH


@dataclass
class Peer:
    """A running peer: the settings that point at it, and what it holds so far."""

    params: dict[str, object]
    held: Callable[[], set[str]]
    detail: Any = None


def _sop_uids(files: list[Path]) -> set[str]:
    return {str(read_file_meta_info(p).MediaStorageSOPInstanceUID) for p in files}


def _nothing() -> set[str]:
    return set()


@contextmanager
def _storescp(folder: Path) -> Iterator[Peer]:
    with StoreSCP(folder, ae_title="PEER") as scp:
        params: dict[str, object] = {
            "ae_title": "PEER",
            "host": LOOPBACK,
            "port": scp.port,
            "timeout": 10,
        }
        yield Peer(params, lambda: _sop_uids(scp.files()), scp)


@contextmanager
def _refusing_scp() -> Iterator[Peer]:
    with ScriptedStoreSCP(REFUSED_STATUS, ae_title="PEER") as scp:
        params: dict[str, object] = {
            "ae_title": "PEER",
            "host": LOOPBACK,
            "port": scp.port,
            "timeout": 10,
        }
        yield Peer(params, lambda: set(scp.stored), scp)


def _orthanc_sop_uids(server: Orthanc) -> set[str]:
    found: list[dict[str, Any]] = server.get("/instances?expand")
    return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in found}


@contextmanager
def _orthanc(folder: Path) -> Iterator[Peer]:
    with Orthanc(folder, dicomweb=True) as server:
        params: dict[str, object] = {"url": server.dicomweb_url, "timeout": 10}
        yield Peer(params, lambda: _orthanc_sop_uids(server), server)


@contextmanager
def _orthanc_wrong_password(folder: Path) -> Iterator[Peer]:
    """Orthanc with users: a wrong password is a 401, which no retry changes."""
    config = {"AuthenticationEnabled": True, "RegisteredUsers": {"radbridge": "right"}}
    with Orthanc(folder, dicomweb=True, config=config) as server:
        url = server.dicomweb_url.replace("http://", "http://radbridge@")
        params: dict[str, object] = {"url": url, "token": "wrong", "timeout": 10}
        yield Peer(params, _nothing, server)


class HttpVendorApi:
    """A loopback AI vendor API: records each manifest POSTed and each cancellation
    (``DELETE {url}/{job_id}``: path and body) and answers ``status``; with ``hold``, it
    takes that long over each manifest before it answers (a vendor registering the job).
    ``seen`` lists what it saw in order: ``POST``, ``POST answered``, ``DELETE /…``."""

    def __init__(self, status: int = 200, *, hold: float = 0.0) -> None:
        self.manifests: list[dict[str, Any]] = []
        self.cancellations: list[tuple[str, dict[str, Any]]] = []
        self.seen: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                api.seen.append("POST")
                time.sleep(hold)
                if status < 300:
                    api.manifests.append(json.loads(body))
                api.seen.append("POST answered")
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_DELETE(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                api.seen.append(f"DELETE {self.path}")
                api.cancellations.append((self.path, json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/api/jobs"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> HttpVendorApi:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


#: What a transport's ``cancel(job)`` without a reason tells the vendor (the job id aside).
_CANCELLED = {"vendor": "contract", "reason": "cancelled"}


@contextmanager
def _vendor_api(status: int) -> Iterator[Peer]:
    with HttpVendorApi(status) as api:
        params: dict[str, object] = {"url": api.url, "timeout": 10}
        yield Peer(params, lambda: {str(m["job_id"]) for m in api.manifests}, api)


# ------------------------------------------------------------------ vendor transports


class TransportKit(ABC):
    """Peers for one vendor transport, around one stage (a store with a spooled study)."""

    name: ClassVar[str]
    cancels: ClassVar[bool] = False
    """Whether the transport can tell the vendor a job is cancelled."""

    def __init__(self, stage: WadoStack) -> None:
        self.stage = stage

    def context(self) -> TransportContext:
        """What ``radbridge serve`` would tell the transport."""
        return TransportContext(
            "contract",
            product="Contract test product",
            result_timeout=600,
            public_url=self.stage.base_url,
            database_url=str(self.stage.engine.url),
        )

    @abstractmethod
    def accepting(self) -> AbstractContextManager[Peer]: ...

    @abstractmethod
    def rejecting(self) -> AbstractContextManager[Peer]: ...

    @abstractmethod
    def down(self) -> dict[str, object]:
        """Settings that point where nothing listens."""

    def expected(self, job: Job, files: list[Path]) -> set[str]:
        """What the accepting peer holds once ``job`` is delivered."""
        return _sop_uids(files)

    def is_cancelled(self, peer: Peer, job: Job) -> bool:
        """Whether the peer sees ``job`` as cancelled (only for kits that cancel)."""
        raise NotImplementedError


class DicomKit(TransportKit):
    name = "dicom"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _storescp(self.stage.tmp / "storescp")

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _refusing_scp()

    def down(self) -> dict[str, object]:
        return {"ae_title": "PEER", "host": LOOPBACK, "port": free_port(), "timeout": 5}


class DicomWebKit(TransportKit):
    name = "dicomweb"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _orthanc(self.stage.tmp / "orthanc")

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _orthanc_wrong_password(self.stage.tmp / "orthanc-users")

    def down(self) -> dict[str, object]:
        return {"url": f"http://{LOOPBACK}:{free_port()}/dicom-web", "timeout": 5}


class HttpKit(TransportKit):
    name = "http"
    cancels = True

    def accepting(self) -> AbstractContextManager[Peer]:
        return _vendor_api(200)

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _vendor_api(400)

    def down(self) -> dict[str, object]:
        return {"url": f"http://{LOOPBACK}:{free_port()}/api/jobs", "timeout": 5}

    def expected(self, job: Job, files: list[Path]) -> set[str]:
        return {str(job.id)}

    def is_cancelled(self, peer: Peer, job: Job) -> bool:
        """The vendor was told (``DELETE {url}/{job_id}``) and can no longer pull the study
        with the job's last token."""
        api: HttpVendorApi = peer.detail
        manifest = api.manifests[-1]
        url = f"{manifest['wado_rs']}/studies/{manifest['study_instance_uid']}"
        headers = {"Authorization": f"Bearer {manifest['token']}", "Accept": DICOM_ACCEPT}
        told = api.cancellations == [(f"/api/jobs/{job.id}", {**_CANCELLED, "job_id": job.id})]
        return told and httpx.get(url, headers=headers, timeout=10).status_code == 401


_HUBS: list[HubStack] = []


def _shared_hub() -> HubStack:
    """One hub radbridge for every radbridge contract test of this process (a hub per test
    would cost a migrated store and a web server each); closed when the process exits."""
    if not _HUBS:
        folder = Path(tempfile.mkdtemp(prefix="radbridge-contract-hub-"))
        stack = ExitStack()
        _HUBS.append(stack.enter_context(hub_stack(folder)))
        atexit.register(shutil.rmtree, folder, True)
        atexit.register(stack.close)
    return _HUBS[0]


@contextmanager
def _hub(*, wrong_token: bool = False) -> Iterator[Peer]:
    """The hub (``/link/v1/transfers``), holding what arrives from now on; with
    ``wrong_token`` the site's token is one the hub never made (401)."""
    hub = _shared_hub()
    before = set(hub.all_sop_uids())
    token = "not-a-token-of-this-hub" if wrong_token else hub.tokens["township-a"]
    params: dict[str, object] = {"url": hub.url, "token": token, "timeout": 10}
    yield Peer(params, lambda: set(hub.all_sop_uids()) - before, hub)


class RadbridgeKit(TransportKit):
    name = "radbridge"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _hub()

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _hub(wrong_token=True)

    def down(self) -> dict[str, object]:
        return {"url": f"http://{LOOPBACK}:{free_port()}", "token": "t", "timeout": 5}


TRANSPORT_KITS: dict[str, type[TransportKit]] = {
    kit.name: kit for kit in (DicomKit, DicomWebKit, HttpKit, RadbridgeKit)
}


# ------------------------------------------------------------------ write-back targets


class TargetKit(ABC):
    """Peers for one write-back target type, in ``folder``."""

    name: ClassVar[str]

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @abstractmethod
    def accepting(self) -> AbstractContextManager[Peer]: ...

    @abstractmethod
    def rejecting(self) -> AbstractContextManager[Peer]: ...

    @abstractmethod
    def down(self) -> dict[str, object]: ...

    @abstractmethod
    def expected(self, message_id: str, objects: list[Path]) -> set[str]:
        """What the accepting peer holds once the delivery ``message_id`` went through."""


class DicomTargetKit(TargetKit):
    name = "dicom"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _storescp(self.folder / "pacs")

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _refusing_scp()

    def down(self) -> dict[str, object]:
        return {"ae_title": "PEER", "host": LOOPBACK, "port": free_port(), "timeout": 5}

    def expected(self, message_id: str, objects: list[Path]) -> set[str]:
        return _sop_uids(objects)


class DicomWebTargetKit(DicomTargetKit):
    name = "dicomweb"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _orthanc(self.folder / "orthanc")

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _orthanc_wrong_password(self.folder / "orthanc-users")

    def down(self) -> dict[str, object]:
        return {"url": f"http://{LOOPBACK}:{free_port()}/dicom-web", "timeout": 5}


@contextmanager
def _ris(answer: str) -> Iterator[Peer]:
    """A RIS answering every message with ``answer``; it holds the messages it took (AA)."""

    def held() -> set[str]:
        taken = ris.messages() if answer == "AA" else []
        return {str(m.segment("MSH")[10]) for m in taken}

    with Ris(default=answer) as ris:
        params: dict[str, object] = {"host": LOOPBACK, "port": ris.port, "timeout": 5}
        yield Peer(params, held, ris)


class Hl7TargetKit(TargetKit):
    name = "hl7"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _ris("AA")

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _ris("AR")

    def down(self) -> dict[str, object]:
        return {"host": LOOPBACK, "port": free_port(), "timeout": 2}

    def expected(self, message_id: str, objects: list[Path]) -> set[str]:
        return {message_id}


@contextmanager
def _fhir(status: list[int]) -> Iterator[Peer]:
    with FhirReceiver(status) as receiver:
        yield Peer({"url": receiver.url, "timeout": 10}, lambda: set(receiver.created), receiver)


class FhirTargetKit(TargetKit):
    name = "fhir"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _fhir([])

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _fhir([400])

    def down(self) -> dict[str, object]:
        return {"url": f"http://{LOOPBACK}:{free_port()}/fhir", "timeout": 5}

    def expected(self, message_id: str, objects: list[Path]) -> set[str]:
        """The DiagnosticReport and one Observation per finding, each created once."""
        system = "urn:radbridge:delivery"
        return {
            f"identifier={system}|{key}"
            for key in (message_id, f"{message_id}-1", f"{message_id}-2")
        }


@contextmanager
def _webhook(status: list[int]) -> Iterator[Peer]:
    with Webhook(status) as hook:
        yield Peer(
            {"url": hook.url, "timeout": 10},
            lambda: {headers["Idempotency-Key"] for headers, _ in hook.received},
            hook,
        )


class WebhookTargetKit(TargetKit):
    name = "webhook"

    def accepting(self) -> AbstractContextManager[Peer]:
        return _webhook([])

    def rejecting(self) -> AbstractContextManager[Peer]:
        return _webhook([400])

    def down(self) -> dict[str, object]:
        return {"url": f"http://{LOOPBACK}:{free_port()}/hook", "timeout": 5}

    def expected(self, message_id: str, objects: list[Path]) -> set[str]:
        return {message_id}


TARGET_KITS: dict[str, type[TargetKit]] = {
    kit.name: kit
    for kit in (DicomTargetKit, DicomWebTargetKit, Hl7TargetKit, FhirTargetKit, WebhookTargetKit)
}
