"""The simulated PACS: Orthanc when it is installed, else a built-in storage SCP; what it holds.

:class:`Orthanc` runs a real Orthanc with its own storage on loopback ports
(process management only: it never installs anything; ``tests/peers.py``
adds the apt-get install on top for the test suite). :class:`BuiltinPacs` is
a pynetdicom storage SCP that files every instance as received under
``folder/STUDY/SERIES/SOP.dcm``. :func:`query_orthanc` and
:func:`query_folder` say what either holds: studies, their series and
instance counts, in one shape (:class:`HeldStudy`).

Orthanc 1.10 has no option to bind HTTP or DICOM to one address: it listens
on every interface; ``RemoteAccessAllowed: false`` keeps its HTTP API to
localhost.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.status import Status
from pynetdicom.transport import ThreadedAssociationServer

from adapters.dicom_status import StoreFailure
from adapters.harness.errors import HarnessError
from adapters.harness.process import LOOPBACK, ManagedProcess, free_port, wait_for_port
from adapters.harness.storage import HEADER_TAGS, Received, file_received, storage_contexts

#: Where Debian installs Orthanc (it is not on a normal user's PATH).
ORTHANC_PATHS = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")


def orthanc_executable() -> str | None:
    """The Orthanc binary, or None when Orthanc is not installed."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return next((p for p in ORTHANC_PATHS if Path(p).exists()), None)


@dataclass(frozen=True)
class HeldSeries:
    series_instance_uid: str
    modality: str | None
    series_description: str | None
    instances: int


@dataclass(frozen=True)
class HeldStudy:
    """One study a PACS holds, with its series and instance counts."""

    study_instance_uid: str
    patient_id: str | None
    accession_number: str | None
    study_description: str | None
    series: list[HeldSeries] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.series)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "instances": self.instances}


class Orthanc(ManagedProcess):
    """An Orthanc server with its own storage, on free (or given) loopback ports.

    Any calling AE may store and echo (``DicomAlwaysAllowStore``/``Echo``, no
    ``DicomModalities``), any called AE is accepted (``DicomCheckCalledAet:
    false``), and no plugins load unless ``dicomweb_plugin`` names the
    DICOMweb plugin's library (STOW-RS, QIDO-RS and WADO-RS at
    :attr:`dicomweb_url`). ``config`` entries override the defaults written
    here; with ``AuthenticationEnabled`` and ``RegisteredUsers`` REST calls
    go as the first user.
    """

    def __init__(
        self,
        folder: Path | str | None = None,
        *,
        aet: str = "ORTHANC",
        config: dict[str, Any] | None = None,
        http_port: int | None = None,
        dicom_port: int | None = None,
        dicomweb_plugin: str | None = None,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="orthanc-")
            folder = self._tmp.name
        self.folder = Path(folder).resolve()
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.http_url = f"http://{LOOPBACK}:{self.http_port}"
        self.log_path = self.folder / "orthanc.log"
        self.config: dict[str, Any] = {
            "Name": "radbridge-harness-orthanc",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {},
            "UnknownSopClassAccepted": True,
            "SaveJobs": False,
            "StorageCompression": False,
            **(config or {}),
        }
        self.dicomweb_url = f"{self.http_url}/dicom-web"
        if dicomweb_plugin is not None:
            self.config["Plugins"] = [*self.config["Plugins"], dicomweb_plugin]
            self.config["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Host": LOOPBACK,
                "Ssl": False,
                **self.config.get("DicomWeb", {}),
            }

    def start(self, timeout: float = 30.0) -> Self:
        """Write the configuration, start Orthanc and wait until ``GET /system`` answers."""
        executable = orthanc_executable()
        if executable is None:
            raise HarnessError(
                "Orthanc is not installed (apt-get install -y orthanc); "
                "or use the built-in PACS (harness pacs run --builtin)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        self._start([executable, str(config_path)], cwd=self.folder)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                self.get("/system")
                wait_for_port(self.dicom_port, timeout=max(deadline - time.monotonic(), 0.1))
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"Orthanc did not answer in {timeout} s:\n{self.log()}"
                    ) from None
                time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """One REST call; the answer decoded from JSON (or the raw bytes if it is not JSON)."""
        req = urllib.request.Request(self.http_url + path, data=body, method=method)  # noqa: S310
        users: dict[str, str] = self.config.get("RegisteredUsers") or {}
        if self.config.get("AuthenticationEnabled") and users:
            user, password = next(iter(users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=30) as answer:  # noqa: S310
            data: bytes = answer.read()
            if answer.headers.get_content_type() == "application/json":
                return json.loads(data)
            return data

    def get(self, path: str) -> Any:
        """``GET path`` on the REST API, decoded from JSON."""
        return self.request("GET", path)

    def instances(self) -> list[str]:
        """Orthanc's IDs of every stored instance."""
        ids: list[str] = self.get("/instances")
        return ids

    def statistics(self) -> dict[str, Any]:
        """``GET /statistics``: counts and disk size."""
        stats: dict[str, Any] = self.get("/statistics")
        return stats

    def studies(self) -> list[HeldStudy]:
        """What this Orthanc holds (see :func:`query_orthanc`)."""
        return query_orthanc(self.http_url)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc by its PID, then remove the folder if this object made it."""
        super().stop(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BuiltinPacs:
    """A pynetdicom storage SCP (every storage SOP class and transfer syntax) filing into a folder.

    C-ECHO and C-STORE from any calling AE; each instance is written as it
    came (:func:`adapters.harness.storage.file_received`).
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        ae_title: str = "PACS",
        host: str = LOOPBACK,
        port: int | None = None,
        max_associations: int = 10,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.ae_title = ae_title
        self.host = host
        self.port = port or free_port(host)
        self.max_associations = max_associations
        """Associations at once; more are rejected (transient, local limit exceeded)."""
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None

    @property
    def dicom_port(self) -> int:
        """The DICOM port (the same name as :attr:`Orthanc.dicom_port`)."""
        return self.port

    @property
    def aet(self) -> str:
        return self.ae_title

    def _on_store(self, event: evt.Event) -> int:
        try:
            received = file_received(event, self.folder)
        except (OSError, TypeError, InvalidDicomError):
            return StoreFailure.OUT_OF_RESOURCES
        with self._lock:
            self.received.append(received)
        return Status.SUCCESS

    def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = False
        ae.maximum_associations = self.max_associations
        ae.supported_contexts = storage_contexts()
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def studies(self) -> list[HeldStudy]:
        return query_folder(self.folder)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def query_orthanc(http_url: str, *, timeout: float = 30.0) -> list[HeldStudy]:
    """Studies, series and instance counts an Orthanc holds, by its REST API."""

    def get(path: str) -> Any:
        with urllib.request.urlopen(http_url.rstrip("/") + path, timeout=timeout) as answer:  # noqa: S310
            return json.loads(answer.read())

    try:
        studies = get("/studies?expand")
        series = {s["ID"]: s for s in get("/series?expand")}
    except OSError as exc:
        raise HarnessError(f"cannot query Orthanc at {http_url}: {exc}") from exc
    held = []
    for study in studies:
        tags = study.get("MainDicomTags", {})
        patient = study.get("PatientMainDicomTags", {})
        items = [series[i] for i in study.get("Series", []) if i in series]
        held.append(
            HeldStudy(
                study_instance_uid=tags.get("StudyInstanceUID", ""),
                patient_id=patient.get("PatientID"),
                accession_number=tags.get("AccessionNumber"),
                study_description=tags.get("StudyDescription"),
                series=sorted(
                    (
                        HeldSeries(
                            series_instance_uid=s["MainDicomTags"].get("SeriesInstanceUID", ""),
                            modality=s["MainDicomTags"].get("Modality"),
                            series_description=s["MainDicomTags"].get("SeriesDescription"),
                            instances=len(s.get("Instances", [])),
                        )
                        for s in items
                    ),
                    key=lambda s: s.series_instance_uid,
                ),
            )
        )
    return sorted(held, key=lambda s: s.study_instance_uid)


def query_folder(folder: Path | str) -> list[HeldStudy]:
    """Studies, series and instance counts of the DICOM files under ``folder`` (headers only)."""
    studies: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or path.suffix in (".part", ".log", ".json"):
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "StudyInstanceUID" not in ds:
            continue
        study = studies.setdefault(
            str(ds.StudyInstanceUID),
            {
                "patient_id": ds.get("PatientID"),
                "accession_number": ds.get("AccessionNumber"),
                "study_description": ds.get("StudyDescription"),
                "series": {},
            },
        )
        series = study["series"].setdefault(
            str(ds.get("SeriesInstanceUID", "")),
            {"modality": ds.get("Modality"), "desc": ds.get("SeriesDescription"), "sops": set()},
        )
        series["sops"].add(str(ds.get("SOPInstanceUID", path.name)))
    return [
        HeldStudy(
            study_instance_uid=uid,
            patient_id=_text(s["patient_id"]),
            accession_number=_text(s["accession_number"]),
            study_description=_text(s["study_description"]),
            series=[
                HeldSeries(
                    series_instance_uid=suid,
                    modality=_text(x["modality"]),
                    series_description=_text(x["desc"]),
                    instances=len(x["sops"]),
                )
                for suid, x in sorted(s["series"].items())
            ],
        )
        for uid, s in sorted(studies.items())
    ]


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
