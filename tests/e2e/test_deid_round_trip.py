"""The round trip of a de-identified study through one ``radbridge serve``.

The harness RIS orders (HL7 ORM^O01 over MLLP), dcmtk ``storescu`` sends the CT study, radbridge
sends a de-identified copy to the harness's simulated vendor, which returns a TID 1500 SR
referencing the study it got (pseudonymous UIDs) by C-STORE to the results AE; radbridge
maps it back and writes it to Orthanc and the harness RIS. A result that references UIDs
radbridge never issued stays an orphan.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from pydicom import dcmread

from adapters.dicom.synthetic import generate_study
from adapters.harness.products import ProductKind, make_seg, make_sr
from adapters.harness.ris import RisListener, make_order, order_message, send_message
from adapters.harness.vendor import ResultsTarget, ResultType, SimulatedVendor
from adapters.results.sr import SourceStudy
from broker.model.deid import SECRET_VARIABLE
from tests.peers import Orthanc, free_port, storescu, wait_until
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("deid_round_trip")]

PATIENT_ID, PATIENT_NAME, ACCESSION = "SH-7781", "Wang^XiaoDong=王^小东", "A2026DEID1"
FINDINGS_TOKEN = f"cloudhttp-results-{uuid.uuid4().hex}"


@dataclass
class Loop:
    rb: Radbridge
    vendor: SimulatedVendor
    puller: SimulatedVendor
    pacs: Orthanc
    ris: RisListener
    folder: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.rb.config['http']['listen']['port']}"

    def chest_study(self, name: str, patient_id: str, accession: str) -> tuple[str, Any]:
        """Send a chest CT (routed to the HTTP vendor); its original UID and the vendor's
        result once delivered."""
        files = generate_study(
            "ct_chest",
            self.folder / name,
            instances=3,
            rows=32,
            columns=32,
            patient_id=patient_id,
            patient_name="Li^Na",
            accession=accession,
        )
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        before = len(self.puller.delivered)
        storescu(files, self.rb.port)
        delivered = self.puller.wait_delivered(before + 1, timeout=60)[before]
        assert delivered.ok, delivered.detail
        return study_uid, delivered


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """radbridge with the hl7 listener, a DICOM vendor that gets head CTs de-identified
    (its own basic profile) and an HTTP vendor that pulls chest CTs de-identified (the
    route's profile, keeping patient characteristics); both return an SR by C-STORE;
    write-back to Orthanc (dicom) and the harness RIS (hl7)."""
    folder = tmp_path_factory.mktemp("deid-loop")
    port, http_port, puller_port = free_port(), free_port(), free_port()
    with (
        Orthanc(folder / "pacs") as pacs,
        RisListener() as ris,
        SimulatedVendor(
            ProductKind.HEAD_CT_BLEED,
            folder / "vendor",
            ae_title="CLOUDAI",
            delay=0.2,
            target=ResultsTarget(ae_title="RADBRIDGE_RES", port=port),
        ) as vendor,
        SimulatedVendor(
            ProductKind.LUNG_NODULE_CT,
            folder / "puller",
            ae_title="CLOUDHTTP",
            http_port=puller_port,
            delay=0.2,
            result=ResultType.JSON,
            target=ResultsTarget(
                callback_url=f"http://127.0.0.1:{http_port}/results/jobs/{{job_id}}/findings",
                token=FINDINGS_TOKEN,
            ),
        ) as puller,
    ):
        config = base_config(folder / "rb", port)
        config["hl7"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
        config["vendors"] = {
            "cloudai": {
                "product": "Head CT bleed triage (cloud)",
                "transport": {
                    "type": "dicom",
                    "ae_title": "CLOUDAI",
                    "host": "127.0.0.1",
                    "port": vendor.port,
                },
                "results": {"quiet_seconds": 0.5},
                "deidentify": {"profile": "basic"},
            },
            "cloudhttp": {
                "product": "Lung nodule CT (cloud)",
                "transport": {
                    "type": "http",
                    "url": f"http://127.0.0.1:{puller_port}/jobs",
                    "send_patient": True,
                },
                "results": {"quiet_seconds": 0.5},
            },
        }
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["targets"] = {
            "pacs": dicom_block(pacs.aet, pacs.dicom_port),
            "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
        }
        config["routes"] = [
            {
                "name": "head-ct",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["cloudai"],
                "write_back": ["pacs", "ris"],
            },
            {
                "name": "chest-ct",
                "when": {"modality": "CT", "body_part": "CHEST"},
                "send": ["cloudhttp"],
                "write_back": ["pacs"],
                "deidentify": {"profile": "basic", "options": ["retain_patient_characteristics"]},
            },
        ]
        rb = Radbridge(folder / "rb", config)
        rb.env[SECRET_VARIABLE] = f"e2e-secret-{uuid.uuid4().hex}"
        rb.env["RADBRIDGE_VENDORS__CLOUDHTTP__RESULTS__TOKEN"] = FINDINGS_TOKEN
        rb.start()
        try:
            yield Loop(rb, vendor, puller, pacs, ris, folder)
        finally:
            rb.close()


def _pacs_sr(loop: Loop, study_uid: str) -> dict[str, Any] | None:
    found = loop.pacs.request(
        "POST",
        "/tools/find",
        json.dumps(
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
        ).encode(),
    )
    if not found:
        return None
    tags: dict[str, Any] = loop.pacs.get(f"/instances/{found[0]}/simplified-tags")
    tags["_id"] = found[0]
    return tags


def test_the_vendors_sr_comes_back_on_the_original_study_patient_and_accession(
    loop: Loop,
) -> None:
    """The vendor receives the study with pseudonymous UIDs, patient and accession; its SR
    (new SOP Instance UID, references to the pseudonymous study) ends in Orthanc under the
    original Study Instance UID with the original patient and accession, the RIS gets the
    ORU with the original accession; the audit trail says which profile was applied."""
    hl7_port = int(loop.rb.config["hl7"]["listen"]["port"])
    order = make_order(accession=ACCESSION, patient_id=PATIENT_ID, issuer=None)
    ack = send_message("127.0.0.1", hl7_port, order_message("ORM^O01", order))
    assert ack.code.value == "AA"
    files = generate_study(
        "ct_head",
        loop.folder / "study",
        instances=4,
        rows=32,
        columns=32,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        accession=ACCESSION,
        charset="GB18030",
    )
    original = dcmread(files[0], stop_before_pixels=True)
    study_uid = str(original.StudyInstanceUID)
    storescu(files, loop.rb.port)

    [delivered] = loop.vendor.wait_delivered(1, timeout=60)
    assert delivered.ok, delivered.detail
    got = [dcmread(r.path, stop_before_pixels=True) for r in loop.vendor.received]
    assert len(got) == len(files)
    assert {str(d.StudyInstanceUID) for d in got} == {delivered.study_uid} != {study_uid}
    assert {str(d.PatientID) for d in got} != {PATIENT_ID}
    assert ACCESSION not in {str(d.AccessionNumber) for d in got}
    assert all(d.PatientIdentityRemoved == "YES" for d in got)

    sr = wait_until(lambda: _pacs_sr(loop, study_uid), "the SR in Orthanc", timeout=60)
    assert sr["SOPInstanceUID"] == delivered.sop_instance_uid  # the vendor's own UID kept
    assert (sr["PatientID"], sr["AccessionNumber"]) == (PATIENT_ID, ACCESSION)
    assert "PatientIdentityRemoved" not in sr

    oru = wait_until(
        lambda: [m for m in loop.ris.messages if m.kind.startswith("ORU")], "the ORU", 60
    )
    message = hl7.parse(oru[0].raw.decode("utf-8", "replace").replace("\n", "\r"))
    assert str(message.segment("OBR")[18]) == ACCESSION
    assert str(message.segment("PID")[3]).startswith(PATIENT_ID)

    day = datetime.now(UTC)
    rows = json.loads(
        loop.rb.cli(
            "audit",
            "export",
            "--from",
            (day - timedelta(days=1)).date().isoformat(),
            "--to",
            (day + timedelta(days=1)).date().isoformat(),
            "--action",
            "study.sent",
        ).stdout
    )
    [sent] = [r for r in rows if r["detail"]["study_uid"] == study_uid]
    assert sent["detail"]["deidentified"]["profile"] == "basic"
    assert sent["detail"]["deidentified"]["study_pseudonym"] == delivered.study_uid


def test_an_http_vendor_gets_a_pseudonymous_manifest_and_pulls_deidentified_copies(
    loop: Loop,
) -> None:
    """A route's profile applies to what it sends an HTTP vendor: the manifest names the
    pseudonymous study, series, accession and patient and the profile; WADO-RS serves
    de-identified copies under those UIDs (patient characteristics kept, as the route's
    option says); the vendor's JSON findings (pseudonymous study and series references)
    become an SR in Orthanc under the original study and patient, referencing the original
    series."""
    study_uid, delivered = loop.chest_study("chest", "SH-9001", "A2026HTTP1")
    original = dcmread(next((loop.folder / "chest").rglob("*.dcm")), stop_before_pixels=True)
    [manifest] = [m for m in loop.puller.manifests if m["job_id"] == int(delivered.job_id)]
    assert manifest["study_instance_uid"] == delivered.study_uid != study_uid
    assert manifest["deidentified"] == "basic+retain_patient_characteristics"
    assert manifest["accession_number"] not in (None, "A2026HTTP1")
    assert manifest["patient"]["id"] not in ("", "SH-9001")
    series = {s["series_instance_uid"] for s in manifest["series"]}
    assert str(original.SeriesInstanceUID) not in series
    pulled = [
        dcmread(p, stop_before_pixels=True)
        for p in (loop.puller.folder / delivered.study_uid).rglob("*.dcm")
    ]
    assert len(pulled) == 3
    assert {str(d.SeriesInstanceUID) for d in pulled} == series
    assert {str(d.PatientID) for d in pulled} == {manifest["patient"]["id"]}
    assert {str(d.PatientSex) for d in pulled} == {str(original.PatientSex)}  # kept
    sr = wait_until(lambda: _pacs_sr(loop, study_uid), "the SR in Orthanc", timeout=60)
    assert (sr["PatientID"], sr["AccessionNumber"]) == ("SH-9001", "A2026HTTP1")
    held = loop.pacs.request("GET", f"/instances/{sr['_id']}/file")
    assert str(original.SeriesInstanceUID).encode() in held
    assert not any(uid.encode() in held for uid in series | {delivered.study_uid})


def test_a_seg_by_stow_rs_is_stored_under_the_original_study(loop: Loop) -> None:
    """A SEG the HTTP vendor makes from the copies it pulled and STOWs to the pseudonymous
    study's URL is taken (200), stored under the original Study Instance UID with its own
    SOP Instance UID, and kept with the study's job."""
    study_uid, delivered = loop.chest_study("stow", "SH-9002", "A2026STOW1")
    pulled = sorted((loop.puller.folder / delivered.study_uid).rglob("*.dcm"))
    images = [dcmread(p) for p in pulled]
    seg = make_seg(ProductKind.LUNG_NODULE_CT, SourceStudy.from_datasets(images), images)
    path = loop.folder / "vendor-seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    boundary = "deid-stow"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    answer = httpx.post(
        f"{loop.http}/results/studies/{delivered.study_uid}",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Authorization": f"Bearer {FINDINGS_TOKEN}",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    results = json.loads(loop.rb.cli("results", "list", "--study", study_uid, "--json").stdout)
    objects = [o for r in results for o in r["objects"]]
    [stored] = [o for o in objects if o["sop_instance_uid"] == str(seg.SOPInstanceUID)]
    assert stored["study_uid"] == study_uid
    assert {r["job_id"] for r in results} == {int(delivered.job_id)}


def test_a_result_referencing_uids_never_issued_is_an_orphan(loop: Loop) -> None:
    """An SR from the vendor whose study and references radbridge never issued is not
    guessed onto any study: it is kept as an orphan and written nowhere."""
    files = generate_study(
        "ct_head", loop.folder / "unknown", instances=2, rows=32, columns=32, patient_id="X1"
    )
    source = SourceStudy.from_datasets([dcmread(p) for p in files])
    sr = make_sr(ProductKind.HEAD_CT_BLEED, source, result_id="never-issued")
    path = loop.folder / "orphan-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    storescu([path], loop.rb.port, called_ae="RADBRIDGE_RES", calling_ae="CLOUDAI")
    orphans = wait_until(
        lambda: [
            o
            for o in json.loads(loop.rb.cli("results", "orphans", "--json").stdout)
            if str(sr.SOPInstanceUID) in json.dumps(o)
        ],
        "the orphan",
        timeout=30,
    )
    assert orphans
    assert _pacs_sr(loop, str(sr.StudyInstanceUID)) is None
