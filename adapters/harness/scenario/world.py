"""What a scenario runs against: its studies, the simulators, radbridge, and the store to look at.

:class:`World` owns every process and server a scenario starts and stops
them all (by PID, or by their own ``stop``) in :meth:`World.close`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from sqlalchemy import Engine

from adapters.dicom.synthetic import generate_study
from adapters.harness.errors import HarnessError
from adapters.harness.pacs import BuiltinPacs, HeldStudy, Orthanc, orthanc_executable
from adapters.harness.process import LOOPBACK, RadbridgeServe, free_port
from adapters.harness.ris import RisListener
from adapters.harness.scenario.schema import Scenario, StudySpec, fill_placeholders
from adapters.harness.scenario.settings import base_config, merge
from adapters.harness.vendor import ResultsTarget, ResultType, SimulatedVendor
from adapters.harness.webhook import Webhook
from broker.model.domain import Role
from broker.store import make_engine
from broker.store.api_tokens import ApiTokens
from broker.store.deliveries import DeliveryStore
from broker.store.jobs import JobStore
from broker.store.studies import StudyStore

#: Results are complete this long after the vendor's last object unless the scenario says.
QUIET_SECONDS = 1.0
MODALITY = {"ct": "CT", "mr": "MR", "dx": "DX", "mg": "MG"}


@dataclass(frozen=True)
class Study:
    """A generated study: its files and identifiers."""

    name: str
    spec: StudySpec
    files: list[Path]
    uid: str

    @property
    def modality(self) -> str:
        return MODALITY[self.spec.kind.split("_")[0]]


class World:
    """The studies, simulators and radbridge of one scenario run, in ``folder``."""

    def __init__(self, scenario: Scenario, folder: Path) -> None:
        self.scenario = scenario
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.rb_port, self.hl7_port, self.http_port = free_port(), free_port(), free_port()
        self.http_url = f"http://{LOOPBACK}:{self.http_port}"
        self.studies: dict[str, Study] = {}
        self.vendors: dict[str, SimulatedVendor | None] = {}
        self.vendor_ports: dict[str, tuple[int, int | None]] = {}
        self.vendor_tokens: dict[str, str] = {}
        self.vendor_events: dict[str, list[str]] = {}
        self.pacs: Orthanc | BuiltinPacs | None = None
        self.pacs_ports = (free_port(), free_port())
        self.pacs_kind = "none"
        self.ris: RisListener | None = None
        self.ris_port = free_port()
        self.webhook: Webhook | None = None
        self.webhook_port = free_port()
        self._api_token: str | None = None
        self.config: dict[str, Any] = {}
        self.config_path = folder / "radbridge.yaml"
        self.radbridge = RadbridgeServe(self.config_path, folder / "radbridge.log")
        self._engine: Engine | None = None
        for name, sim in scenario.simulators.vendors.items():
            self.vendor_ports[name] = (free_port(), free_port() if sim.http else None)
            self.vendor_tokens[name] = "harness-" + secrets.token_urlsafe(16)
            self.vendor_events[name] = []

    # ------------------------------------------------------------- set-up

    def make_studies(self) -> None:
        for name, spec in self.scenario.studies.items():
            files = generate_study(
                spec.kind,
                self.folder / "studies" / name,
                instances=spec.instances,
                rows=spec.rows,
                columns=spec.columns,
                patient_id=spec.patient_id,
                accession=spec.accession,
                study_uid=spec.study_uid,
            )
            uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            self.studies[name] = Study(name, spec, files, uid)

    def placeholders(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "radbridge.port": self.rb_port,
            "radbridge.hl7_port": self.hl7_port,
            "radbridge.http_port": self.http_port,
            "radbridge.http_url": self.http_url,
        }
        for name, sim in self.scenario.simulators.vendors.items():
            port, http_port = self.vendor_ports[name]
            values[f"vendor.{name}.port"] = port
            values[f"vendor.{name}.ae_title"] = self.vendor_ae(name)
            if sim.http:
                values[f"vendor.{name}.http_port"] = http_port
                values[f"vendor.{name}.url"] = f"http://{LOOPBACK}:{http_port}/jobs"
        if self.scenario.simulators.pacs is not None:
            values["pacs.dicom_port"] = self.pacs_ports[0]
            values["pacs.ae_title"] = self.scenario.simulators.pacs.ae_title
        if self.scenario.simulators.ris is not None:
            values["ris.port"] = self.ris_port
        if self.scenario.simulators.webhook is not None:
            values["webhook.url"] = f"http://{LOOPBACK}:{self.webhook_port}/hook"
        for name, study in self.studies.items():
            values[f"study.{name}.uid"] = study.uid
        return values

    def write_config(self) -> None:
        fragment = fill_placeholders(self.scenario.radbridge, self.placeholders(), "radbridge")
        config = merge(
            base_config(self.folder, self.rb_port, self.hl7_port, self.http_port), fragment
        )
        for vendor in (config.get("vendors") or {}).values():
            if isinstance(vendor, dict):
                results = vendor.setdefault("results", {})
                if isinstance(results, dict):
                    results.setdefault("quiet_seconds", QUIET_SECONDS)
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.radbridge.env = {
            f"RADBRIDGE_VENDORS__{name.upper()}__RESULTS__TOKEN": token
            for name, token in self.vendor_tokens.items()
            if name in (config.get("vendors") or {})
        }

    def vendor_ae(self, name: str) -> str:
        return self.scenario.simulators.vendors[name].ae_title or name.upper()[:16]

    # --------------------------------------------------------- simulators

    def start_vendor(self, name: str) -> SimulatedVendor:
        if self.vendors.get(name) is not None:
            raise HarnessError(f"vendor {name} is already running")
        sim = self.scenario.simulators.vendors[name]
        port, http_port = self.vendor_ports[name]
        events = self.vendor_events[name]
        vendor = SimulatedVendor(
            sim.product,
            self.folder / "vendors" / name,
            ae_title=self.vendor_ae(name),
            port=port,
            http_port=http_port,
            delay=sim.delay,
            result=sim.result,
            target=ResultsTarget(
                ae_title="RADBRIDGE_RES",
                port=self.rb_port,
                callback_url=f"{self.http_url}/results/jobs/{{job_id}}/findings"
                if sim.result is ResultType.JSON
                else None,
                token=self.vendor_tokens[name],
            ),
            fault=sim.fault,
            slow_seconds=sim.slow_seconds,
            abort_after=sim.abort_after,
            on_event=events.append,
            findings=sim.findings,
        )
        self.vendors[name] = vendor.start()
        return vendor

    def stop_vendor(self, name: str) -> None:
        vendor = self.vendors.get(name)
        if vendor is None:
            raise HarnessError(f"vendor {name} is not running")
        vendor.stop()
        self.vendors[name] = None

    def vendor_instances(self, name: str, study_uid: str | None = None) -> int:
        """Instances the vendor holds (of one study, or of all), also across its restarts."""
        folder = self.folder / "vendors" / name
        where = folder / study_uid if study_uid else folder
        if not where.exists():
            return 0
        return sum(
            1
            for p in where.rglob("*.dcm")
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )

    def start_pacs(self) -> None:
        sim = self.scenario.simulators.pacs
        if sim is None:
            raise HarnessError("the scenario has no PACS")
        if self.pacs is not None:
            raise HarnessError("the PACS is already running")
        dicom_port, http_port = self.pacs_ports
        use_orthanc = sim.kind == "orthanc" or (
            sim.kind == "auto" and orthanc_executable() is not None
        )
        folder = self.folder / "pacs"
        if use_orthanc:
            self.pacs = Orthanc(
                folder, aet=sim.ae_title, http_port=http_port, dicom_port=dicom_port
            ).start()
            self.pacs_kind = "Orthanc"
        else:
            self.pacs = BuiltinPacs(folder, ae_title=sim.ae_title, port=dicom_port).start()
            self.pacs_kind = "built-in"

    def stop_pacs(self) -> None:
        if self.pacs is None:
            raise HarnessError("the PACS is not running")
        pacs, self.pacs = self.pacs, None
        pacs.stop()

    def _close_pacs(self) -> None:
        """At the end nothing of the PACS is needed: Orthanc gets half a second, then SIGKILL."""
        pacs, self.pacs = self.pacs, None
        if isinstance(pacs, Orthanc):
            pacs.stop(timeout=0.5)
        elif pacs is not None:
            pacs.stop()

    def pacs_studies(self) -> list[HeldStudy]:
        return [] if self.pacs is None else self.pacs.studies()

    def start_ris(self) -> None:
        sim = self.scenario.simulators.ris
        if sim is not None:
            self.ris = RisListener(
                port=self.ris_port, answer=sim.answer, folder=self.folder / "ris"
            ).start()

    def start_simulators(self) -> str:
        """Start the RIS, the PACS and every vendor that starts up; what was started."""
        started = []
        self.start_ris()
        if self.ris is not None:
            started.append(f"RIS :{self.ris_port}")
        if self.scenario.simulators.webhook is not None:
            self.webhook = Webhook(port=self.webhook_port).start()
            started.append(f"webhook :{self.webhook_port}")
        sim = self.scenario.simulators.pacs
        if sim is not None and sim.running:
            self.start_pacs()
            started.append(f"PACS ({self.pacs_kind}) :{self.pacs_ports[0]}")
        for name, vendor in self.scenario.simulators.vendors.items():
            if vendor.running:
                self.start_vendor(name)
                started.append(f"{name} ({vendor.product.value}, {vendor.result.value})")
            else:
                self.vendors[name] = None
                started.append(f"{name} (down)")
        return ", ".join(started) or "none"

    # -------------------------------------------------------------- store

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(str(self.config["storage"]["database"]))
        return self._engine

    def jobs(self) -> JobStore:
        return JobStore(self.engine)

    def deliveries(self) -> DeliveryStore:
        return DeliveryStore(self.engine)

    def study_store(self) -> StudyStore:
        return StudyStore(self.engine)

    def api_token(self) -> str:
        """A viewer's token for radbridge's REST API (made in its store once)."""
        if self._api_token is None:
            self._api_token = ApiTokens(self.engine).create(Role.VIEWER, "harness scenario")
        return self._api_token

    # ----------------------------------------------------------- tear-down

    def close(self) -> None:
        """Stop radbridge and every simulator this world started."""
        self.radbridge.stop()
        for name in list(self.vendors):
            vendor = self.vendors.pop(name)
            if vendor is not None:
                vendor.stop()
        self._close_pacs()
        if self.ris is not None:
            self.ris.stop()
            self.ris = None
        if self.webhook is not None:
            self.webhook.stop()
            self.webhook = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
