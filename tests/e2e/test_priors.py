"""Priors for comparison through ``radbridge serve``: a route with ``priors:`` fetches the
patient's earlier study from a real PACS (Orthanc, C-FIND + C-GET) and the vendor (dcmtk
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
    job = _job(world.rb, current)
    held = wait_until(
        lambda: (h := _received(world.vendor)).get(world.prior_uid) == 2 and h, "prior at vendor"
    )
    assert held.get(current) == 2
    assert not set(world.other_uids) & set(held)
    assert "priors from pacs: 1 of 3 asked (2 instances)" in _notes(job)
    assert not list((world.rb.spool / "priors").glob("job-*"))  # the spooled copy is gone
    assert all(s["study_uid"] != world.prior_uid for s in world.rb.studies())  # never routed


def test_pacs_down_sends_the_study_without_priors(world: World) -> None:
    """With the PACS stopped the study still goes (after at most the wait), without priors,
    and the job's history says why."""
    world.pacs.stop()
    before = set(_received(world.vendor))
    files, current = _study(world.folder / "current2", PATIENT, ISSUER, "20260302")
    storescu(files, world.rb.port)
    job = _job(world.rb, current)
    held = wait_until(lambda: (h := _received(world.vendor)).get(current) == 2 and h, "study")
    assert set(held) - before == {current}
    assert "sent without priors: the PACS pacs" in _notes(job)
