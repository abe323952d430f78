"""Priors for comparison through ``radbridge serve``: a route with ``priors:`` fetches the
patient's earlier study from a real PACS (Orthanc, C-FIND + C-GET; QIDO-RS + WADO-RS from
its DICOMweb plugin) and the vendor (dcmtk
``storescp``) receives it with the current study; another patient's study, and a study of
the same patient ID under another issuer, never come. The harness's HTTP vendor finds the
prior in its manifest and pulls it by its own WADO-RS URL with the job's token. With
Orthanc stopped the study goes without priors after the configured wait, and the job's
history, the time ledger and ``routes explain`` say so.

One service, one Orthanc and one vendor for the module; the tests run in order (the last
one stops Orthanc).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import StudyKind, generate_study
from adapters.harness.products import ProductKind
from adapters.harness.vendor import SimulatedVendor
from broker.model.deid import SECRET_VARIABLE
from broker.model.plugins import registered
from broker.model.priors import PriorsPolicy, PriorsQuery
from tests.peers import Orthanc, StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.slow(seconds=20),
    pytest.mark.xdist_group("priors"),
]

PATIENT = "PRI0001"
ISSUER = "HOSP_A"
WAIT = 10.0  # ample on a loaded machine: a stopped PACS refuses at once anyway


def patient_study(
    folder: Path, patient_id: str, issuer: str, date: str, kind: StudyKind = "ct_head"
) -> tuple[list[Path], str]:
    """A small CT (two 32x32 slices; a head CT by default) of ``patient_id`` / ``issuer``
    dated ``date``."""
    files = generate_study(kind, folder, instances=2, rows=32, columns=32, patient_id=patient_id)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyDate = date
        ds.IssuerOfPatientID = issuer
        ds.save_as(path)
    return files, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def _config(
    folder: Path, pacs: Orthanc, vendor: StoreSCP, cloud: SimulatedVendor
) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["targets"] = {"pacs": dicom_block(pacs.aet, pacs.dicom_port)}
    config["vendors"] = {
        "followup": {
            "product": "CT head follow-up",
            "transport": {
                "type": "dicom",
                "ae_title": vendor.ae_title,
                "host": "127.0.0.1",
                "port": vendor.port,
            },
        },
        "cloudfollow": {
            "product": "CT chest follow-up (cloud)",
            "transport": {"type": "http", "url": f"http://127.0.0.1:{cloud.http_port}/jobs"},
        },
        "cloudanon": {
            "product": "CT coronary follow-up (cloud, de-identified)",
            "transport": {"type": "http", "url": f"http://127.0.0.1:{cloud.http_port}/jobs"},
            "deidentify": {"profile": "basic"},
        },
    }
    priors = {"source": "pacs", "count": 3, "max_age": "3650d", "wait": WAIT}
    config["routes"] = [
        {
            "name": "head-followup",
            "when": {"modality": "CT", "body_part": "HEAD"},
            "send": ["followup"],
            "priors": priors,
        },
        {
            "name": "chest-followup",
            "when": {"modality": "CT", "body_part": "CHEST"},
            "send": ["cloudfollow"],
            "priors": priors,
        },
        {
            "name": "heart-followup",
            "when": {"modality": "CT", "body_part": "HEART"},
            "send": ["cloudanon"],
            "priors": priors,
        },
    ]
    return config


@dataclass
class World:
    rb: Radbridge
    pacs: Orthanc
    vendor: StoreSCP
    cloud: SimulatedVendor
    folder: Path
    prior_uid: str
    other_uids: tuple[str, ...]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("priors")
    pacs = Orthanc(
        folder / "orthanc", config={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True}
    ).start()
    vendor = StoreSCP(folder / "vendor", ae_title="FOLLOWUP").start()
    cloud = SimulatedVendor(
        ProductKind.LUNG_NODULE_CT, folder / "cloud", http_port=free_port(), delay=3600
    ).start()
    rb: Radbridge | None = None
    try:
        held = {
            "prior": patient_study(folder / "prior", PATIENT, ISSUER, "20240105"),
            "other-patient": patient_study(folder / "other", "PRI0002", ISSUER, "20240105"),
            "other-issuer": patient_study(folder / "issuer", PATIENT, "HOSP_B", "20240106"),
        }
        for files, _uid in held.values():
            for path in files:
                pacs.request("POST", "/instances", path.read_bytes())
        rb = Radbridge(folder / "rb", _config(folder / "rb", pacs, vendor, cloud))
        rb.env[SECRET_VARIABLE] = f"priors-secret-{uuid.uuid4().hex}"
        rb.start()
        yield World(
            rb,
            pacs,
            vendor,
            cloud,
            folder,
            held["prior"][1],
            (held["other-patient"][1], held["other-issuer"][1]),
        )
    finally:
        if rb is not None:
            rb.close()
        cloud.stop()
        vendor.stop()
        pacs.stop()


def _received(vendor: StoreSCP) -> dict[str, int]:
    """Study UID → instances the vendor holds."""
    held: dict[str, int] = {}
    for path in vendor.files():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        held[uid] = held.get(uid, 0) + 1
    return held


def _job(rb: Radbridge, study_uid: str) -> dict[str, Any]:
    """The study's job as ``jobs show --json`` gives it, once it was sent."""

    def sent() -> dict[str, Any] | None:
        jobs = json.loads(rb.cli("jobs", "list", "--json").stdout)
        found = [j for j in jobs if j["study_uid"] == study_uid]
        if not found or found[0]["state"] not in ("sent", "awaiting_result"):
            return None
        shown: dict[str, Any] = json.loads(
            rb.cli("jobs", "show", str(found[0]["id"]), "--json").stdout
        )
        return shown

    job: dict[str, Any] = wait_until(sent, "the job sent", timeout=90)
    return job


def _notes(job: dict[str, Any]) -> str:
    return " | ".join(str(e.get("error") or "") for e in job["history"])


def test_vendor_receives_the_current_and_the_prior_study(world: World) -> None:
    """The vendor gets the current study and the patient's prior (same ID and issuer), and
    nothing of another patient or of the same ID under another issuer."""
    files, current = patient_study(world.folder / "current", PATIENT, ISSUER, "20260301")
    storescu(files, world.rb.port)
    wait_until(lambda: _received(world.vendor).get(current) == 2, "study at vendor", timeout=90)
    job = _job(world.rb, current)  # after the vendor has it: a few CLI calls, not hundreds
    held = _received(world.vendor)
    assert held.get(world.prior_uid) == 2  # sent in the same job, before the study's state
    assert not set(world.other_uids) & set(held)
    assert "priors from pacs: 1 of 3 asked (2 instances)" in _notes(job)
    assert not list((world.rb.spool / "priors").glob("job-*"))  # the spooled copy is gone
    assert all(s["study_uid"] != world.prior_uid for s in world.rb.studies())  # never routed


def test_http_vendor_pulls_the_prior_by_its_own_url(world: World) -> None:
    """An ``http`` vendor's manifest lists the patient's prior (only it) with its own WADO-RS
    URL; the vendor pulls its instances with the job's token, which opens no other study;
    the time ledger stamps the priors requested and fetched, and ``routes explain`` says
    what the route asks for and what the job's fetch found."""
    files, current = patient_study(world.folder / "cloud", PATIENT, ISSUER, "20260303", "ct_chest")
    storescu(files, world.rb.port)
    wait_until(
        lambda: world.cloud.priors_pulled.get(world.prior_uid) == 2, "prior pulled", timeout=90
    )
    [manifest] = [m for m in world.cloud.manifests if m["study_instance_uid"] == current]
    [prior] = manifest["priors"]
    assert prior["study_instance_uid"] == world.prior_uid
    assert prior["wado_rs"] == f"{manifest['wado_rs']}/studies/{world.prior_uid}"
    assert sum(s["instances"] for s in prior["series"]) == 2
    assert len(list((world.cloud.folder / world.prior_uid).glob("*/*.dcm"))) == 2
    for other in world.other_uids:  # held by the PACS, never the job's: the token stays shut
        answer = httpx.get(
            f"{manifest['wado_rs']}/studies/{other}",
            headers={"Authorization": f"Bearer {manifest['token']}"},
            timeout=10,
        )
        assert answer.status_code == 403
    ledger = json.loads(world.rb.cli("studies", "timeline", current, "--json").stdout)
    stamps = {s["kind"]: s for s in ledger["stamps"]}
    assert stamps["priors_requested"]["detail"] == "up to 3 from pacs"
    assert stamps["priors_fetched"]["detail"] == "priors from pacs: 1 of 3 asked (2 instances)"
    assert stamps["priors_requested"]["at"] <= stamps["priors_fetched"]["at"]
    explained = world.rb.cli("routes", "explain", current, check=False).stdout
    assert "priors: up to 3 prior studies from pacs (same patient ID and issuer, same " in explained
    job = "cloudfollow (route 'chest-followup'): awaiting_result, delivered"
    assert f"{job}; priors from pacs: 1 of 3 asked (2 instances)" in explained


def _pulled(cloud: SimulatedVendor, study_uid: str) -> list[pydicom.Dataset]:
    """The headers of what the HTTP vendor pulled of ``study_uid``."""
    return [
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in sorted((cloud.folder / study_uid).glob("*/*.dcm"))
    ]


def test_deidentified_http_vendor_pulls_the_prior_under_the_same_pseudonyms(
    world: World,
) -> None:
    """A de-identified ``http`` vendor's manifest lists the patient's prior under its
    pseudonymous UID; the vendor pulls it de-identified, with the current study's patient
    pseudonym; the prior's real UID opens nothing (403). The prior's pseudonym is recorded as
    sent with the current study (the prior is not in the index): retention purges it then."""
    files, current = patient_study(world.folder / "anon", PATIENT, ISSUER, "20260305", "ct_ccta")
    storescu(files, world.rb.port)
    [manifest] = wait_until(
        lambda: [m for m in world.cloud.manifests if m.get("deidentified")], "manifest"
    )
    [prior] = manifest["priors"]
    pseudonym = prior["study_instance_uid"]
    assert pseudonym not in (world.prior_uid, current, manifest["study_instance_uid"])
    assert prior["wado_rs"] == f"{manifest['wado_rs']}/studies/{pseudonym}"
    assert sum(s["instances"] for s in prior["series"]) == 2
    wait_until(lambda: world.cloud.priors_pulled.get(pseudonym) == 2, "prior pulled", timeout=90)
    now, before = (
        _pulled(world.cloud, manifest["study_instance_uid"]),
        _pulled(world.cloud, pseudonym),
    )
    assert len(now) == len(files) and len(before) == 2
    patients = {str(ds.PatientID) for ds in now + before}
    assert len(patients) == 1 and PATIENT not in patients  # one patient, one pseudonym
    assert {str(ds.PatientIdentityRemoved) for ds in before} == {"YES"}
    answer = httpx.get(
        f"{manifest['wado_rs']}/studies/{world.prior_uid}",
        headers={"Authorization": f"Bearer {manifest['token']}"},
        timeout=10,
    )
    assert answer.status_code == 403
    shown = world.rb.cli("pseudonyms", "show", pseudonym, "--json")
    assert shown.returncode == 0, shown.stderr
    [issued] = json.loads(shown.stdout)
    # the prior is not in radbridge's index: its pseudonym is purged with the current study
    assert (issued["original"], issued["sent_with"]) == (world.prior_uid, current)


def test_priors_from_a_dicomweb_pacs(tmp_path: Path) -> None:
    """From a DICOMweb PACS (Orthanc's plugin: QIDO-RS, WADO-RS) the fetch brings the
    patient's prior whole, and nothing of another patient or another issuer."""
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        held = {
            name: patient_study(tmp_path / name, patient, issuer, "20240105")
            for name, patient, issuer in [
                ("prior", PATIENT, ISSUER),
                ("other-patient", "PRI0002", ISSUER),
                ("other-issuer", PATIENT, "HOSP_B"),
            ]
        }
        for files, _uid in held.values():
            for path in files:
                pacs.request("POST", "/instances", path.read_bytes())
        query = PriorsQuery("1.2.3.4", PATIENT, ISSUER, ("CT",), ("HEAD",), "20260301")
        policy = PriorsPolicy("pacs", "dicomweb", {"url": pacs.dicomweb_url}, count=3, wait=20)
        fetch = registered("priors_dicomweb")
        fetched = fetch(query, policy, tmp_path / "out")
    finally:
        pacs.stop()
    assert [p.study_uid for p in fetched.priors] == [held["prior"][1]]
    assert {str(pydicom.dcmread(f).StudyInstanceUID) for f in fetched.files} == {held["prior"][1]}
    assert len(fetched.files) == 2
    assert fetched.note == "priors from pacs: 1 of 3 asked (2 instances)"


def test_pacs_down_sends_the_study_without_priors(world: World) -> None:
    """With the PACS stopped the study still goes (after at most the wait), without priors,
    and the job's history says why."""
    world.pacs.stop()
    before = set(_received(world.vendor))
    files, current = patient_study(world.folder / "current2", PATIENT, ISSUER, "20260302")
    storescu(files, world.rb.port)
    wait_until(lambda: _received(world.vendor).get(current) == 2, "study at vendor", timeout=90)
    job = _job(world.rb, current)
    assert set(_received(world.vendor)) - before == {current}
    assert "sent without priors: the PACS pacs" in _notes(job)
    ledger = json.loads(world.rb.cli("studies", "timeline", current, "--json").stdout)
    [skipped] = [s for s in ledger["stamps"] if s["kind"] == "priors_skipped"]
    assert skipped["detail"].startswith("sent without priors: the PACS pacs")
    assert "priors_fetched" not in {s["kind"] for s in ledger["stamps"]}
    explained = world.rb.cli("routes", "explain", current, check=False).stdout
    assert "; sent without priors: the PACS pacs" in explained
