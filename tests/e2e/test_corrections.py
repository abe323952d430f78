"""Corrections follow the results, through one ``radbridge serve``: the modality (``storescu``)
sends a head CT, the vendor (dcmtk ``storescp``) gets it and C-STOREs its SR back, radbridge
writes it to the PACS (Orthanc), the RIS (an MLLP listener) and the EMR (a FHIR receiver);
then an IOCM Rejection Note (by ``storescu``) or an ADT^A40 (by MLLP) makes radbridge
withdraw or correct what it wrote, and audit it. Chest CTs go to the harness's HTTP vendor
(it pulls them by WADO-RS and keeps its result back), which a rejection note cancels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import httpx
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.sr.coding import Code

from adapters.dicom.synthetic import generate_study
from adapters.harness.hl7_messages import adt_a40
from adapters.harness.products import ProductKind
from adapters.harness.vendor import SimulatedVendor
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from adapters.writeback.correction import rejection_note
from broker.model.domain import Patient
from tests.fhir_receiver import FhirReceiver
from tests.integration.test_results_sr import _dciodvfy, head_bleed
from tests.peers import LOOPBACK, Orthanc, StoreSCP, free_port, storescu, wait_until
from tests.ris import Ris
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("corrections")]

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass
class World:
    rb: Radbridge
    vendor: StoreSCP
    puller: SimulatedVendor
    pacs: Orthanc
    ris: Ris
    emr: FhirReceiver
    folder: Path

    def written(self, n: int, patient_id: str) -> tuple[list[Path], pydicom.Dataset]:
        """A head CT of ``patient_id`` sent, its vendor SR returned and written to the PACS,
        the RIS and the EMR; the study's files and the SR."""
        files = generate_study(
            "ct_head",
            self.folder / f"study{n}",
            instances=6,
            rows=32,
            columns=32,
            patient_id=patient_id,
            accession=f"ACC-C{n}",
        )
        before = len(self.vendor.files())
        storescu(files, self.rb.port)
        wait_until(lambda: len(self.vendor.files()) >= before + len(files), "vendor has study")
        source = read_source_study(files)
        sr = findings_to_sr(
            parse_findings(json.dumps(head_bleed(source)).encode()), source, result_id=f"v{n}"
        )
        path = self.folder / f"vendor-sr{n}.dcm"
        sr.save_as(path, enforce_file_format=True)
        oru_before, fhir_before = len(self.ris.received), len(self.emr.bundles)
        storescu([path], self.rb.port, called_ae="RADBRIDGE_RES", calling_ae="ICHAI")
        wait_until(lambda: self.instances(source.study_uid, "SR"), "PACS has the SR")
        wait_until(lambda: len(self.ris.received) > oru_before, "RIS has the ORU")
        wait_until(lambda: len(self.emr.bundles) > fhir_before, "EMR has the report")
        return files, sr

    def reject(self, files: list[Path], reason: Code) -> tuple[pydicom.Dataset, Path]:
        """A Rejection Note for ``files`` C-STOREd to the ingest AE, as a modality or PACS
        sends it; the note and its file."""
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        note = rejection_note(
            headers,
            reason,
            message_id=f"modality-note-{len(list(self.folder.glob('note-*.dcm')))}",
            created=datetime(2024, 5, 1, 8, 15, tzinfo=UTC),
        )
        path = self.folder / f"note-{note.SOPInstanceUID}.dcm"
        note.save_as(path, enforce_file_format=True)
        storescu([path], self.rb.port)
        return note, path

    def instances(self, study_uid: str, modality: str) -> list[dict[str, Any]]:
        """Orthanc's instances of the study with ``modality``, with their tags."""
        found = self.pacs.request(
            "POST",
            "/tools/find",
            json.dumps(
                {
                    "Level": "Instance",
                    "Query": {"StudyInstanceUID": study_uid, "Modality": modality},
                }
            ).encode(),
        )
        return [self.pacs.get(f"/instances/{i}/simplified-tags") | {"_id": i} for i in found]

    def file(self, instance: str) -> Path:
        data = self.pacs.request("GET", f"/instances/{instance}/file")
        path = self.folder / f"{instance}.dcm"
        path.write_bytes(data if isinstance(data, bytes) else bytes(data))
        return path

    def orus(self, accession: str) -> list[hl7.Message]:
        messages = [hl7.parse(m) for m in self.ris.received if "ORU^R01" in m]
        return [m for m in messages if str(m.segment("OBR")[18]) == accession]

    def report(self, study_uid: str) -> dict[str, Any]:
        """The DiagnosticReport the EMR holds for the study (its latest version)."""
        [report] = [
            r
            for r in self.emr.created.values()
            if r["resourceType"] == "DiagnosticReport"
            and r["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study_uid}"
        ]
        return report

    def audit(self, action: str) -> list[dict[str, Any]]:
        done = self.rb.cli(
            "audit", "export", "--from", "2000-01-01", "--to", "2100-01-01", "--action", action
        )
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """radbridge with the hl7 listener, a head-CT bleed vendor (storescp) whose SR comes back
    to RADBRIDGE_RES, and write-back to Orthanc (dicom), the RIS (hl7) and a FHIR receiver;
    chest CTs to the harness's HTTP vendor (its result would come after the module ends)."""
    folder = tmp_path_factory.mktemp("corrections")
    puller_port = free_port()
    with (
        StoreSCP(folder / "ichai", ae_title="ICHAI") as vendor,
        SimulatedVendor(
            ProductKind.LUNG_NODULE_CT, folder / "puller", http_port=puller_port, delay=3600
        ) as puller,
        Orthanc(folder / "pacs") as pacs,
        Ris() as ris,
        FhirReceiver() as emr,
    ):
        config = base_config(folder / "rb", free_port())
        config["hl7"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
        config["vendors"] = {
            "ichai": {
                "product": "Head CT bleed triage",
                "transport": {
                    "type": "dicom",
                    "ae_title": "ICHAI",
                    "host": LOOPBACK,
                    "port": vendor.port,
                },
                "results": {"quiet_seconds": 0.5},
            },
            "lungcloud": {
                "product": "Lung nodule CT (cloud)",
                "transport": {"type": "http", "url": f"http://{LOOPBACK}:{puller_port}/jobs"},
            },
        }
        config["http"] = {"listen": {"host": LOOPBACK, "port": free_port()}}
        config["targets"] = {
            "pacs": dicom_block(pacs.aet, pacs.dicom_port),
            "ris": {"type": "hl7", "host": LOOPBACK, "port": ris.port},
            "emr": {"type": "fhir", "url": emr.url},
        }
        config["routes"] = [
            {
                "name": "head-ct-bleed",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["ichai"],
                "priority": "stat",
                "write_back": ["pacs", "ris", "emr"],
            },
            {
                "name": "chest-ct-cloud",
                "when": {"modality": "CT", "body_part": "CHEST"},
                "send": ["lungcloud"],
            },
        ]
        config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
        rb = Radbridge(folder / "rb", config)
        rb.start()
        try:
            yield World(rb, vendor, puller, pacs, ris, emr, folder)
        finally:
            rb.close()


def test_rejection_note_withdraws_the_result_everywhere(world: World) -> None:
    """A Rejection Note ("Rejected for Patient Safety Reasons") for the series the result was
    made from: Orthanc receives radbridge's own rejection note for its SR (same title, valid
    for dciodvfy), the RIS an ORU with result status X, the FHIR receiver the report
    entered-in-error; the correction and each withdrawal are audited."""
    files, sr = world.written(1, "PAT0101")
    note, path = world.reject(files, Code("113037", "DCM", "Rejected for Patient Safety Reasons"))
    study_uid = str(sr.StudyInstanceUID)
    [ours] = wait_until(lambda: world.instances(study_uid, "KO"), "radbridge's rejection note")
    held = pydicom.dcmread(world.file(ours["_id"]))
    assert held.SOPClassUID == KOS
    assert held.ConceptNameCodeSequence[0].CodeValue == "113037"
    evidence = held.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    rejected = {str(r.ReferencedSOPInstanceUID) for s in evidence for r in s.ReferencedSOPSequence}
    assert rejected == {str(sr.SOPInstanceUID)}
    assert held.PatientID == "PAT0101"
    report = _dciodvfy(world.file(ours["_id"]))
    assert not [line for line in report if line.startswith("Error")], report
    first, withdrawn = wait_until(lambda: len(o := world.orus("ACC-C1")) == 2 and o, "2nd ORU")
    assert str(first.segment("OBR")[25]) == "P"
    assert str(withdrawn.segment("OBR")[25]) == "X"
    assert {str(obx[11]) for obx in withdrawn.segments("OBX")} == {"X"}
    wait_until(lambda: world.report(study_uid)["status"] == "entered-in-error", "FHIR update")
    [opened] = [a for a in world.audit("result.correction") if a["target"] == f"study:{study_uid}"]
    assert opened["detail"]["cause"] == "rejected"
    assert opened["actor"] == "C-STORE from CT01"

    def corrected() -> list[str]:  # audited once each target answered, after the peer has it
        done = world.audit("result.corrected")
        return sorted(a["detail"]["target"] for a in done if a["detail"]["study_uid"] == study_uid)

    wait_until(lambda: corrected() == ["emr", "pacs", "ris"], "every withdrawal audited")
    del note.CurrentRequestedProcedureEvidenceSequence  # a note that rejects nothing
    note.save_as(path, enforce_file_format=True)
    refused = storescu([path], world.rb.port, extra_args=["-v"], check=False)
    answer = refused.stdout + refused.stderr
    assert "Received Store Response (Error: CannotUnderstand)" in answer, answer


def test_merge_reissues_the_result_under_the_surviving_patient(world: World) -> None:
    """An ADT^A40 after write-back: Orthanc receives the SR again with new UIDs under the
    surviving patient and a rejection note for the old one, the RIS an ORU with status C
    naming the survivor, the FHIR receiver the report amended."""
    _files, sr = world.written(2, "PAT0202")
    study_uid = str(sr.StudyInstanceUID)
    survivor = Patient("PAT0299", None, "ROE^RICHARD", "19600101", "M")
    with MLLPClient(LOOPBACK, int(world.rb.config["hl7"]["listen"]["port"])) as client:
        message = adt_a40(survivor, Patient("PAT0202", None))
        ack = hl7.parse(client.send_message(message).decode())
    assert str(ack.segment("MSA")[1]) == "AA"
    srs = wait_until(lambda: len(s := world.instances(study_uid, "SR")) == 2 and s, "new SR")
    [corrected] = [s for s in srs if s["SOPInstanceUID"] != str(sr.SOPInstanceUID)]
    assert corrected["PatientID"] == "PAT0299"
    assert corrected["SeriesInstanceUID"] != str(sr.SeriesInstanceUID)
    [note] = wait_until(lambda: world.instances(study_uid, "KO"), "rejection note")
    held = pydicom.dcmread(world.file(note["_id"]))
    assert held.ConceptNameCodeSequence[0].CodeValue == "113038"  # wrong worklist entry
    assert held.PatientID == "PAT0202"  # the old objects' patient
    evidence = held.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    rejected = {str(r.ReferencedSOPInstanceUID) for s in evidence for r in s.ReferencedSOPSequence}
    assert rejected == {str(sr.SOPInstanceUID)}
    oru = wait_until(lambda: len(o := world.orus("ACC-C2")) == 2 and o[1], "corrected ORU")
    assert str(oru.segment("OBR")[25]) == "C"
    assert str(oru.segment("PID")[3]).split("^")[0] == "PAT0299"
    wait_until(lambda: world.report(study_uid)["status"] == "amended", "FHIR amended")
    assert world.report(study_uid)["subject"]["identifier"]["value"] == "PAT0299"


def test_rejection_note_cancels_the_job_at_the_http_vendor(world: World) -> None:
    """A Rejection Note for a chest CT the HTTP vendor pulled: radbridge tells the vendor
    (``DELETE {url}/{job_id}``, reason ``rejected``) as a delivery to ``vendor.lungcloud``,
    audited ``job.withdrawn``; the job's WADO-RS token opens nothing any more."""
    files = generate_study(
        "ct_chest", world.folder / "chest", instances=4, rows=32, columns=32, patient_id="PAT0303"
    )
    storescu(files, world.rb.port)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pulled = world.puller.folder / study_uid
    wait_until(lambda: len(list(pulled.glob("*/*.dcm"))) == 4, "the vendor pulled the study")
    [manifest] = [m for m in world.puller.manifests if m["study_instance_uid"] == study_uid]
    world.reject(files, Code("113001", "DCM", "Rejected for Quality Reasons"))
    [told] = wait_until(lambda: list(world.puller.cancellations), "the vendor told")
    job_id = manifest["job_id"]
    assert told == {
        "path": f"/jobs/{job_id}",
        "body": {"job_id": job_id, "vendor": "lungcloud", "reason": "rejected"},
    }
    [audited] = wait_until(
        lambda: [a for a in world.audit("job.withdrawn") if a["target"] == f"job:{job_id}"],
        "job.withdrawn audited",
    )
    assert audited["detail"]["target"] == "vendor.lungcloud"
    assert audited["detail"]["cause"] == "rejected"
    answer = httpx.get(
        f"{manifest['wado_rs']}/studies/{study_uid}",
        headers={"Authorization": f"Bearer {manifest['token']}"},
        timeout=10,
    )
    assert answer.status_code == 401


def _pulled_job(world: World, name: str, patient_id: str) -> int:
    """A two-instance chest CT sent to radbridge and pulled by the HTTP vendor: its job's id."""
    files = generate_study(
        "ct_chest", world.folder / name, instances=2, rows=32, columns=32, patient_id=patient_id
    )
    storescu(files, world.rb.port)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pulled = world.puller.folder / study_uid
    wait_until(lambda: len(list(pulled.glob("*/*.dcm"))) == 2, "the vendor pulled the study")
    [manifest] = [m for m in world.puller.manifests if m["study_instance_uid"] == study_uid]
    job_id: int = manifest["job_id"]
    return job_id


def test_operator_cancel_tells_the_http_vendor(world: World) -> None:
    """An operator's cancel (``POST /api/v1/jobs/{id}/cancel``) of a chest CT the HTTP vendor
    pulled tells the vendor as a correction does (``DELETE {url}/{job_id}``, reason
    ``cancelled``, a delivery to ``vendor.lungcloud`` audited ``job.withdrawn``); a second
    cancel is refused (409) and tells it nothing more."""
    job_id = _pulled_job(world, "chest4", "PAT0404")
    token = world.rb.cli("tokens", "create", "--role", "operator", "--name", "ops").stdout.strip()
    url = f"http://{LOOPBACK}:{world.rb.config['http']['listen']['port']}/api/v1/jobs/{job_id}"
    auth = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(f"{url}/cancel", json={"reason": "wrong study"}, headers=auth, timeout=10)
    assert answer.json()["state"] == "cancelled", answer.text
    path = f"/jobs/{job_id}"
    [told] = wait_until(
        lambda: [c for c in world.puller.cancellations if c["path"] == path], "the vendor told"
    )
    assert told["body"] == {"job_id": job_id, "vendor": "lungcloud", "reason": "cancelled"}
    [audited] = wait_until(
        lambda: [a for a in world.audit("job.withdrawn") if a["target"] == f"job:{job_id}"],
        "job.withdrawn audited",
    )
    assert audited["detail"]["target"] == "vendor.lungcloud"
    assert audited["detail"]["cause"] == "cancelled"
    again = httpx.post(f"{url}/cancel", headers=auth, timeout=10)
    assert again.status_code == 409
    assert [c for c in world.puller.cancellations if c["path"] == path] == [told]


def test_operator_cancel_from_the_command_line_tells_the_http_vendor(world: World) -> None:
    """``radbridge jobs cancel ID`` of a study the HTTP vendor pulled tells the vendor too
    (``DELETE {url}/{job_id}``, reason ``cancelled``), as the API's cancel does."""
    job_id = _pulled_job(world, "chest5", "PAT0505")
    cancelled = world.rb.cli("jobs", "cancel", str(job_id))
    assert "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    [told] = wait_until(
        lambda: [c for c in world.puller.cancellations if c["path"] == f"/jobs/{job_id}"],
        "the vendor told",
    )
    assert told["body"] == {"job_id": job_id, "vendor": "lungcloud", "reason": "cancelled"}
