"""UIDs from outside through a real ``radbridge serve`` (one for the module, SQLite).

A SOP Instance UID names one object in one study and series, a Series Instance UID one
series of one study: an instance that reuses either in another study (or another series)
is refused with 0xC409 and listed as an identity conflict, and what radbridge holds stays
as it is; the same object sent again to its own study is still a success. A Study, Series
or SOP Instance UID that is not a valid DICOM UID is refused with 0xC000 naming the
attribute, before anything is stored. The senders are the scripted peer of
``adapters.harness.hostile`` (crafted data sets, every status and comment read back) and
STOW-RS with httpx; the vendor is dcmtk's ``storescp``.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from adapters.harness.hostile import HostilePeer, pdu
from adapters.harness.hostile import datasets as crafted
from adapters.harness.hostile.pdu import Response
from tests.peers import StoreSCP, free_port, wait_until
from tests.service import Radbridge, arriving, base_config

# One worker runs the module: one service for its tests (--dist loadgroup).
pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("uid_conflicts")]

CT = crafted.CT_IMAGE_STORAGE
EXPLICIT = pdu.EXPLICIT_VR_LITTLE_ENDIAN
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
IDENTITY_CONFLICT = 0xC409
RESULTS_TOKEN = "lungai-results-" + uuid.uuid4().hex
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


@dataclass
class Service:
    """radbridge with the REST API and a vendor ``storescp`` that every CT study is sent to."""

    rb: Radbridge
    vendor: StoreSCP
    viewer: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.rb.config['http']['listen']['port']}"

    def api(self, path: str, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.viewer}"}
        return httpx.get(f"{self.http}{path}", headers=headers, params=params, timeout=15)

    def conflicts(self, **params: Any) -> list[dict[str, Any]]:
        answer = self.api("/api/v1/conflicts", **params)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def store(self, *objects: crafted.Identity) -> list[Response]:
        """C-STORE each crafted object over one association; the responses."""
        with HostilePeer(self.rb.port) as peer:
            assert peer.associate(contexts=[(CT, [EXPLICIT])]) is not None
            answers = [
                peer.c_store(crafted.dataset(o), o.sop_class_uid, o.sop_instance_uid)
                for o in objects
            ]
            assert peer.release()
        assert all(a is not None for a in answers), "a C-STORE got no response"
        return [a for a in answers if a is not None]

    def spooled(self, sop_uid: str) -> list[Path]:
        return list((self.rb.spool / "studies").rglob(f"{sop_uid}.dcm"))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One radbridge for the module: HTTP API, results token, a CT route to a storescp."""
    folder = tmp_path_factory.mktemp("uids")
    with StoreSCP(folder / "vendor", ae_title="LUNGAI") as vendor:
        config = base_config(folder / "rb", free_port(), study_stable_seconds=1.0)
        config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
        transport = {"type": "dicom", "ae_title": "LUNGAI", "host": "127.0.0.1"}
        config["vendors"] = {
            "lungai": {
                "product": "CT lung nodule",
                "transport": {**transport, "port": vendor.port},
                "retries": 1,
            }
        }
        config["routes"] = [{"name": "ct", "when": {"modality": "CT"}, "send": ["lungai"]}]
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN"] = RESULTS_TOKEN
        try:
            rb.start()
            # an operator: conflicts show patient IDs to operators and admins, not viewers
            operator = rb.cli("tokens", "create", "--role", "operator", "--name", "uids").stdout
            yield Service(rb, vendor, operator.strip())
        finally:
            rb.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _study(service: Service, study_uid: str) -> dict[str, Any]:
    answer = service.api(f"/api/v1/studies/{study_uid}")
    assert answer.status_code == 200, answer.text
    study: dict[str, Any] = answer.json()
    return study


def _vendor_has(service: Service, study_uid: str, sop_uid: str) -> bool:
    for path in service.vendor.folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPInstanceUID == sop_uid and ds.StudyInstanceUID == study_uid:
                return True
    return False


def test_a_sop_instance_uid_sent_in_another_study_is_refused_and_the_held_one_stays(
    service: Service,
) -> None:
    """An instance, then its SOP Instance UID in another study of the same patient, in a
    study of another patient and in another series of its study: each gets 0xC409 naming
    the SOP Instance UID; the held file keeps its bytes and its place, the other studies do
    not exist, and the study is sent to the vendor with it. A resend to its own study and
    series is a success before and after. Each refusal is a listed conflict."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    held = crafted.Identity(study, series, sop, patient_id="UID-P1")
    assert [a.status for a in service.store(held, held)] == [SUCCESS, SUCCESS]
    [stored] = service.spooled(sop)
    before = _sha(stored)
    other_study = crafted.Identity(generate_uid(), generate_uid(), sop, patient_id="UID-P1")
    other_patient = crafted.Identity(generate_uid(), generate_uid(), sop, patient_id="UID-P2")
    other_series = crafted.Identity(study, generate_uid(), sop, patient_id="UID-P1")
    answers = service.store(other_study, other_patient, other_series, other_study, held)
    assert [a.status for a in answers] == [IDENTITY_CONFLICT] * 4 + [SUCCESS]
    assert answers[0].comment.startswith("SOP Instance UID held in another study")
    assert service.spooled(sop) == [stored] and _sha(stored) == before
    assert not arriving(service.rb.spool)
    shown = _study(service, study)
    assert [(s["series_uid"], s["instances"]) for s in shown["series"]] == [(series, 1)]
    for refused in (other_study, other_patient):
        assert service.api(f"/api/v1/studies/{refused.study_uid}").status_code == 404
    conflicts = service.conflicts(kind="instance_study", study_uid=study)
    by_subject = {c["subject"]: c for c in conflicts}
    assert set(by_subject) == {
        f"SOP Instance UID {sop}, sent in Study Instance UID {other_study.study_uid}",
        f"SOP Instance UID {sop}, sent in Study Instance UID {other_patient.study_uid}",
        f"SOP Instance UID {sop}, sent in Series Instance UID {other_series.series_uid}",
    }
    again = by_subject[
        f"SOP Instance UID {sop}, sent in Study Instance UID {other_study.study_uid}"
    ]
    assert again["count"] == 2 and again["reason"] == "other_study"
    assert again["action"] == "refused" and again["sender"] == "HOSTILE"
    assert again["matched_on"] == "sop_instance_uid"
    moved = by_subject[
        f"SOP Instance UID {sop}, sent in Study Instance UID {other_patient.study_uid}"
    ]
    assert moved["reason"] == "other_patient"
    assert (moved["held"]["patient_id"], moved["claimed"]["patient_id"]) == ("UID-P1", "UID-P2")
    assert "UID-P1" not in moved["detail"] and study not in moved["detail"]
    wait_until(lambda: _vendor_has(service, study, sop), "the held instance at the vendor")


def test_a_series_instance_uid_sent_in_another_study_is_refused(service: Service) -> None:
    """An instance whose Series Instance UID radbridge holds in another study gets 0xC409 and
    is not stored: the held study keeps the series (and takes more of its instances), the
    other study does not exist; the conflict is listed once per sending."""
    study, series = generate_uid(), generate_uid()
    first = crafted.Identity(study, series, generate_uid(), patient_id="UID-S1")
    assert [a.status for a in service.store(first)] == [SUCCESS]
    other = generate_uid()
    intruder = crafted.Identity(other, series, generate_uid(), patient_id="UID-S1")
    more = crafted.Identity(study, series, generate_uid(), patient_id="UID-S1")
    answers = service.store(intruder, more)
    assert [a.status for a in answers] == [IDENTITY_CONFLICT, SUCCESS]
    assert answers[0].comment.startswith("Series Instance UID held in another study")
    assert service.spooled(intruder.sop_instance_uid) == []
    assert service.api(f"/api/v1/studies/{other}").status_code == 404
    shown = _study(service, study)
    assert [(s["series_uid"], s["instances"]) for s in shown["series"]] == [(series, 2)]
    [conflict] = service.conflicts(kind="series_study", study_uid=study)
    assert (
        conflict["subject"] == f"Series Instance UID {series}, sent in Study Instance UID {other}"
    )
    assert conflict["matched_on"] == "series_uid" and conflict["count"] == 1
    assert conflict["reason"] == "other_study"


BAD_UIDS = {
    "path traversal": "../../x",
    "absolute path": "/etc/passwd",
    "empty component": "1.2..3",
    "too long": "1.2." + "3" * 70,
    "leading zero": "1.2.03",
    "letters": "1.2.3a",
}
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _with(keyword: str, value: str) -> crafted.Identity:
    uids = {k: generate_uid() for k in INSTANCE_UIDS}
    uids[keyword] = value
    return crafted.Identity(
        uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"]
    )


def test_uids_that_are_not_valid_dicom_uids_get_c000_naming_the_attribute(
    service: Service,
) -> None:
    """Each kind of non-conformant Study, Series and SOP Instance UID gets 0xC000 with an
    Error Comment that names the attribute; nothing of them is stored or indexed, no
    temporary file stays, and a valid instance after them on the same association is
    stored."""
    files_before = set((service.rb.spool / "studies").rglob("*.dcm"))
    cases = [(k, _with(k, v)) for k in INSTANCE_UIDS for v in BAD_UIDS.values()]
    good = _with("StudyInstanceUID", generate_uid())
    answers = service.store(*(o for _, o in cases), good)
    for (keyword, sent), answer in zip(cases, answers, strict=False):
        assert (answer.status, keyword) == (CANNOT_UNDERSTAND, keyword), sent
        assert answer.comment.startswith(f"{keyword} is not a valid UID"), answer.comment
    assert answers[-1].status == SUCCESS
    assert not arriving(service.rb.spool)
    added = set((service.rb.spool / "studies").rglob("*.dcm")) - files_before
    assert added == set(service.spooled(good.sop_instance_uid))
    listed = service.api("/api/v1/studies", limit=200).json()["items"]
    assert not {s["study_uid"] for s in listed} & {o.study_uid for _, o in cases}


def _result_object(sop_uid: str) -> bytes:
    """A Part 10 Basic Text SR whose SOP Instance UID is ``sop_uid`` (valid or not)."""
    out = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UID it is asked to write
        ds = Dataset()
        ds.SOPClassUID = BASIC_TEXT_SR
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "SR"
        ds.PatientID = "UID-R1"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_stow_rs_result_objects_with_invalid_uids_get_failure_reason_c000(
    service: Service,
) -> None:
    """STOW-RS of a vendor's result objects: to a study URL that is not a UID, 422 and
    nothing stored; one whose SOP Instance UID has a leading zero gets FailureReason 0xC000
    and is not kept, a valid one beside it is stored (202)."""
    boundary = "rb-uids"
    parts = [_result_object("1.2.03"), _result_object(generate_uid())]
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += f"--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Authorization": f"Bearer {RESULTS_TOKEN}",
    }
    url = f"{service.http}/results/studies"
    not_a_study = httpx.post(f"{url}/1.2.03", content=body, headers=headers, timeout=15)
    assert not_a_study.status_code == 422, not_a_study.text
    answer = httpx.post(url, content=body, headers=headers, timeout=15)
    assert answer.status_code == 202, answer.text
    [failed] = answer.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    assert len(answer.json()["00081199"]["Value"]) == 1
    assert not list((service.rb.spool / "results").rglob("1.2.03*"))
