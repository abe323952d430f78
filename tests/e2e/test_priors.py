"""Priors for comparison through ``radbridge serve``: a route with ``priors:`` fetches the
patient's earlier study from a real PACS (Orthanc, C-FIND + C-GET; QIDO-RS + WADO-RS from
its DICOMweb plugin) and the vendor (dcmtk
``storescp``) receives it with the current study; another patient's study, and a study of
the same patient ID under another issuer, never come. With Orthanc stopped the study goes
without priors after the configured wait, and the job's history says so.

One service, one Orthanc and one vendor for the module; the tests run in order (the last
one stops Orthanc).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from broker.model.plugins import registered
from broker.model.priors import PriorsPolicy, PriorsQuery
from tests.peers import Orthanc, StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("priors")]

PATIENT = "PRI0001"
ISSUER = "HOSP_A"
WAIT = 2.0


def _study(folder: Path, patient_id: str, issuer: str, date: str) -> tuple[list[Path], str]:
    """A small head CT (two 32x32 slices) of ``patient_id`` / ``issuer`` dated ``date``."""
    files = generate_study(
        "ct_head", folder, instances=2, rows=32, columns=32, patient_id=patient_id
    )
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyDate = date
        ds.IssuerOfPatientID = issuer
        ds.save_as(path)
    return files, str(pydicom.dcmread(files[0]).StudyInstanceUID)


def _config(folder: Path, pacs: Orthanc, vendor: StoreSCP) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["targets"] = {
        "pacs": {
            "type": "dicom",
            "ae_title": pacs.aet,
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
        }
    }
    config["vendors"] = {
        "followup": {
            "product": "CT head follow-up",
            "transport": {
                "type": "dicom",
                "ae_title": vendor.ae_title,
                "host": "127.0.0.1",
                "port": vendor.port,
            },
        }
    }
    config["routes"] = [
        {
            "name": "head-followup",
            "when": {"modality": "CT"},
            "send": ["followup"],
            "priors": {"source": "pacs", "count": 3, "max_age": "3650d", "wait": WAIT},
        }
    ]
    return config


@dataclass
class World:
    rb: Radbridge
    pacs: Orthanc
    vendor: StoreSCP
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
    rb: Radbridge | None = None
    try:
        held = {
            "prior": _study(folder / "prior", PATIENT, ISSUER, "20240105"),
            "other-patient": _study(folder / "other", "PRI0002", ISSUER, "20240105"),
            "other-issuer": _study(folder / "issuer", PATIENT, "HOSP_B", "20240106"),
        }
        for files, _uid in held.values():
            for path in files:
                pacs.request("POST", "/instances", path.read_bytes())
        rb = Radbridge(folder / "rb", _config(folder / "rb", pacs, vendor)).start()
        yield World(
            rb,
            pacs,
            vendor,
            folder,
            held["prior"][1],
            (held["other-patient"][1], held["other-issuer"][1]),
        )
    finally:
        if rb is not None:
            rb.close()
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
    files, current = _study(world.folder / "current", PATIENT, ISSUER, "20260301")
    storescu(files, world.rb.port)
    wait_until(lambda: _received(world.vendor).get(current) == 2, "study at vendor", timeout=90)
    job = _job(world.rb, current)  # after the vendor has it: a few CLI calls, not hundreds
    held = _received(world.vendor)
    assert held.get(world.prior_uid) == 2  # sent in the same job, before the study's state
    assert not set(world.other_uids) & set(held)
    assert "priors from pacs: 1 of 3 asked (2 instances)" in _notes(job)
    assert not list((world.rb.spool / "priors").glob("job-*"))  # the spooled copy is gone
    assert all(s["study_uid"] != world.prior_uid for s in world.rb.studies())  # never routed


def test_priors_from_a_dicomweb_pacs(tmp_path: Path) -> None:
    """From a DICOMweb PACS (Orthanc's plugin: QIDO-RS, WADO-RS) the fetch brings the
    patient's prior whole, and nothing of another patient or another issuer."""
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    try:
        held = {
            name: _study(tmp_path / name, patient, issuer, "20240105")
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
    files, current = _study(world.folder / "current2", PATIENT, ISSUER, "20260302")
    storescu(files, world.rb.port)
    wait_until(lambda: _received(world.vendor).get(current) == 2, "study at vendor", timeout=90)
    job = _job(world.rb, current)
    assert set(_received(world.vendor)) - before == {current}
    assert "sent without priors: the PACS pacs" in _notes(job)
