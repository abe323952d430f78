"""Identity safety through a real ``radbridge serve``, on SQLite and on PostgreSQL.

Nothing a RIS (MLLP, FHIR), a modality (``storescu``) or a vendor (C-STORE to the results
AE, STOW-RS, the findings callback) sends moves an order, a study or a result to another
patient: it is refused with a protocol answer, or kept and flagged; either way it is an
identity conflict listed by the REST API and ``radbridge conflicts``, which an operator
resolves (audited). ADT updates and merges are applied and audited; a merge of an unknown
patient or across issuers is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from hl7.client import MLLPClient

from adapters.dicom.synthetic import generate_study
from adapters.hl7.ack import Ack, AckCode, read_ack
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from broker.model.domain import OrderPriority, Patient
from tests.databases import fresh_postgres_database
from tests.fhir_data import FHIR_JSON, service_request, typed
from tests.hl7_messages import adt, adt_a40, omi_o23, orm_o01, sample_order
from tests.integration.test_results_sr import head_bleed
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow(seconds=40),
    pytest.mark.xdist_group("identity"),
]

ISSUER = "EXAMPLE-GH"
"""The Issuer of Patient ID of the synthetic studies."""
RESULTS_TOKEN = "lungai-results-" + uuid.uuid4().hex
IDENTITY_CONFLICT = 0xC409
_NUMBERS = itertools.count(int(time.time()) % 100000 * 10)


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    return wait_until(predicate, what, timeout, interval=0.2)


def _config(folder: Path, lungai: int, ichai: int, database: str | None) -> dict[str, Any]:
    config = base_config(folder, free_port())
    if database:
        config["storage"]["database"] = database
    config["hl7"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
    config["http"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}

    def vendor(ae: str, port: int) -> dict[str, Any]:
        transport = {"type": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": port}
        return {"product": f"{ae} product", "transport": transport, "retries": 2}

    config["vendors"] = {"lungai": vendor("LUNGAI", lungai), "ichai": vendor("ICHAI", ichai)}
    config["vendors"]["lungai"]["results"] = {"quiet_seconds": 2.0}
    config["routes"] = [
        {
            "name": "chest-ct",
            "when": {"modality": "CT", "body_part": {"in": ["CHEST", "LUNG"]}},
            "send": ["lungai"],
        },
        {
            "name": "stat-head-ct",
            "when": {"modality": "CT", "body_part": "HEAD", "order.priority": "STAT"},
            "send": ["ichai"],
        },
    ]
    return config


@dataclass
class Stack:
    """radbridge with MLLP, HTTP (REST API, FHIR, results) and DICOM, two vendor storescps."""

    rb: Radbridge
    lungai: StoreSCP
    ichai: StoreSCP
    folder: Path
    operator: str
    viewer: str
    admin: str

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.rb.config['http']['listen']['port']}"

    def hl7(self, message: str) -> Ack:
        """Send one message as the RIS does; its acknowledgment."""
        with MLLPClient("127.0.0.1", int(self.rb.config["hl7"]["listen"]["port"])) as client:
            answer = client.send_message(message)
        raw = answer if isinstance(answer, bytes) else answer.encode()
        return read_ack(raw.strip(b"\x0b\x1c\r\n"))

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.viewer}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.http}{path}", headers=headers, timeout=15, **kw)

    def fhir(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return self.api(
            method,
            f"/fhir{path}",
            self.operator,
            content=json.dumps(body),
            headers={"Content-Type": FHIR_JSON},
        )

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.rb.cli(*args, "--json").stdout)

    def conflicts(self, **params: Any) -> list[dict[str, Any]]:
        """The identity conflicts the REST API lists (open ones unless ``all=True``), as an
        operator sees them (a viewer gets no patient IDs)."""
        answer = self.api("GET", "/api/v1/conflicts", self.operator, params=params)
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def study(self, name: str, kind: str, **fields: Any) -> tuple[str, list[Path]]:
        """A small synthetic study in its own folder; its UID and files."""
        files = generate_study(kind, self.folder / name, rows=32, columns=32, **fields)
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        return uid, files

    def audit(self, action: str) -> list[dict[str, Any]]:
        answer = self.api("GET", "/api/v1/audit", self.admin, params={"action": action})
        assert answer.status_code == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["items"]
        return items


def _token(rb: Radbridge, role: str) -> str:
    return rb.cli("tokens", "create", "--role", role, "--name", f"identity {role}").stdout.strip()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One radbridge per database for the module."""
    folder = tmp_path_factory.mktemp(f"identity-{request.param}")
    with (
        ExitStack() as resources,
        StoreSCP(folder / "lungai", ae_title="LUNGAI") as lungai,
        StoreSCP(folder / "ichai", ae_title="ICHAI") as ichai,
    ):
        database = None
        if request.param == "postgresql":
            database = resources.enter_context(fresh_postgres_database())
        rb = Radbridge(folder / "rb", _config(folder / "rb", lungai.port, ichai.port, database))
        rb.env["RADBRIDGE_VENDORS__LUNGAI__RESULTS__TOKEN"] = RESULTS_TOKEN
        resources.callback(rb.close)
        rb.start()
        tokens = [_token(rb, role) for role in ("operator", "viewer", "admin")]
        yield Stack(rb, lungai, ichai, folder, *tokens)


def _patients(n: int) -> tuple[Patient, Patient]:
    return (
        Patient(f"PA{n}", ISSUER, "DOE^JANE", "19700101", "F"),
        Patient(f"PB{n}", ISSUER, "ROE^RICHARD", "19650303", "M"),
    )


def test_an_order_update_for_another_patient_gets_ae_and_changes_nothing(stack: Stack) -> None:
    """An XO with the order's placer number and a new NW reusing its accession number, both
    naming another patient, get AE with ERR 205 at PID-3; the order keeps its patient and
    version; both are identity conflicts (refused) with the messages kept."""
    n = next(_NUMBERS)
    first, other = _patients(n)
    order = sample_order(n, patient=first, study_uid=None)
    assert stack.hl7(orm_o01(order)).code is AckCode.AA
    moved = stack.hl7(orm_o01(replace(order, patient=other), control="XO"))
    assert moved.code is AckCode.AE
    assert "this placer number is another patient's order (the patient ID differs)" in moved.text
    assert b"ERR|PID^1^3^205&Duplicate key identifier&HL70357" in moved.raw
    reused = replace(order, placer_number=f"NEW{n}", filler_number=f"NEWF{n}", patient=other)
    again = stack.hl7(omi_o23(reused))  # v2.5.1: ERR-2 location, ERR-3 condition
    assert again.code is AckCode.AE
    assert b"|PID^1^3|205^Duplicate key identifier^HL70357|E|" in again.raw
    shown = stack.cli_json("orders", "show", order.accession_number or "")
    assert shown["patient"]["patient_id"] == first.patient_id
    assert shown["version"] == 1 and shown["placer_number"] == order.placer_number
    found = stack.conflicts(kind="order_patient", order_id=shown["id"])
    assert sorted(c["subject"] for c in found) == sorted(
        [f"placer number {order.placer_number}", f"accession number {order.accession_number}"]
    )
    for conflict in found:
        assert conflict["action"] == "refused" and conflict["state"] == "open"
        assert conflict["held"] == {"patient_id": first.patient_id, "issuer": ISSUER}
        assert conflict["claimed"] == {"patient_id": other.patient_id, "issuer": ISSUER}
        assert conflict["source"] == "hl7" and conflict["sender"] == "hl7:RIS^HOSP"
        assert conflict["message_id"] is not None


def test_fhir_put_and_transaction_changing_the_subject_get_409(stack: Stack) -> None:
    """A PUT of a ServiceRequest whose subject is another patient gets 409 (OperationOutcome
    code conflict at ServiceRequest.subject) and the order keeps its subject; a transaction
    doing the same stores nothing of the Bundle; a batch refuses that entry only."""
    n = next(_NUMBERS)
    rid = f"identity-{n}"

    def order(patient_id: str, **changes: Any) -> dict[str, Any]:
        sr = service_request(id=rid, **changes)
        sr["contained"][0]["identifier"] = [typed("MR", patient_id, system=ISSUER)]
        return sr

    created = stack.fhir("PUT", f"/ServiceRequest/{rid}", order(f"FA{n}"))
    assert created.status_code == 201, created.text
    refused = stack.fhir("PUT", f"/ServiceRequest/{rid}", order(f"FB{n}"))
    assert refused.status_code == 409, refused.text
    [issue] = refused.json()["issue"]
    assert issue["code"] == "conflict" and issue["expression"] == ["ServiceRequest.subject"]
    assert "this resource id is another patient's order" in issue["diagnostics"]
    kept = stack.api("GET", f"/fhir/ServiceRequest/{rid}").json()
    assert kept["meta"]["versionId"] == "1"
    assert kept["contained"][0]["identifier"][0]["value"] == f"FA{n}"

    patient_url = f"urn:uuid:{uuid.uuid4()}"
    newcomer = service_request()
    newcomer.pop("contained")
    moved = {k: v for k, v in order(f"FB{n}").items() if k != "contained"}
    entries = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": [typed("MR", f"FB{n}", system=ISSUER)],
            },
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": {**moved, "subject": {"reference": patient_url}},
            "request": {"method": "PUT", "url": f"ServiceRequest/{rid}"},
        },
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {**newcomer, "subject": {"reference": patient_url}},
            "request": {"method": "POST", "url": "ServiceRequest"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    transaction = stack.fhir("POST", "", bundle)
    assert transaction.status_code == 409, transaction.text
    [issue] = transaction.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[1].resource.subject"]
    assert issue["diagnostics"].startswith("the transaction was not stored")
    accession = next(
        i["value"] for i in newcomer["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"
    )
    search = stack.api("GET", "/fhir/ServiceRequest", params={"identifier": accession}).json()
    assert search["total"] == 0
    batch = stack.fhir("POST", "", {**bundle, "type": "batch"})
    assert batch.status_code == 200, batch.text
    statuses = [e["response"]["status"] for e in batch.json()["entry"]]
    assert statuses[1].startswith("409") and statuses[2].startswith("201")
    assert stack.api("GET", f"/fhir/ServiceRequest/{rid}").json()["meta"]["versionId"] == "1"
    found = stack.conflicts(kind="order_patient")
    assert sum(c["subject"] == f"resource id {rid}" for c in found) == 1
    [conflict] = [c for c in found if c["subject"] == f"resource id {rid}"]
    assert conflict["count"] == 3 and conflict["source"] == "fhir"


def _received(vendor: StoreSCP, study_uid: str) -> int:
    """How many instances of the study the vendor's storescp has written."""
    return sum(
        str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study_uid
        for p in vendor.folder.rglob("*")
        if p.is_file()
    )


def _statuses(sent: subprocess.CompletedProcess[str]) -> list[str]:
    """The DIMSE status of each C-STORE response, as ``storescu -d`` prints them."""
    return re.findall(r"DIMSE Status\s*: (0x[0-9a-f]{4})", sent.stdout + sent.stderr)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_instances_naming_another_patient_get_c409_and_the_study_keeps_its_patient(
    stack: Stack,
) -> None:
    """storescu sends a study, then more instances with its Study Instance UID but another
    Patient ID, then a resend of a stored instance with another Patient ID: every one of those
    gets failure 0xC409; the study keeps its patient and instances, the stored copy its
    bytes; one conflict (study_patient) counts them all."""
    n = next(_NUMBERS)
    first, other = _patients(n)
    uid, files = stack.study(f"held{n}", "mr_brain", instances=2, patient_id=first.patient_id)
    storescu(files, stack.rb.port)
    _, intruders = stack.study(
        f"intruder{n}", "mr_brain", instances=1, patient_id=other.patient_id, study_uid=uid
    )
    assert _statuses(storescu(intruders, stack.rb.port, check=False, extra_args=["-d"])) == [
        "0xc409"
    ] * len(intruders)
    sop_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    [stored] = list(stack.rb.spool.rglob(f"{sop_uid}.dcm"))
    before = _sha(stored)
    resend = pydicom.dcmread(files[0])
    resend.PatientID = other.patient_id
    changed = stack.folder / f"resend{n}.dcm"
    resend.save_as(changed, enforce_file_format=True)
    again = storescu([changed], stack.rb.port, check=False, extra_args=["-d"])
    assert _statuses(again) == ["0xc409"]
    assert "study is held for another patient" in again.stdout + again.stderr
    assert _sha(stored) == before
    shown = stack.rb.study(uid)
    assert shown["patient"]["patient_id"] == first.patient_id
    assert shown["instances"] == len(files)
    [conflict] = stack.conflicts(kind="study_patient", study_uid=uid)
    assert conflict["action"] == "refused" and conflict["sender"] == "CT01"
    assert conflict["count"] == len(intruders) + 1
    assert conflict["held"]["patient_id"] == first.patient_id
    assert conflict["claimed"]["patient_id"] == other.patient_id
    listed = stack.cli_json("conflicts", "list", "--study", uid)
    assert [c["id"] for c in listed] == [conflict["id"]]


def test_an_order_of_another_patient_is_flagged_until_an_adt_merge_links_it(stack: Stack) -> None:
    """A STAT order for one patient and a head CT of another with its accession number: the
    order is flagged on the study, not linked, and the study is not routed on it; the conflict
    is listed. An ADT^A40 merging the study's patient into the order's links them, routes the
    study with the order (the STAT vendor gets it), resolves the conflict, and is audited."""
    n = next(_NUMBERS)
    ordered, imaged = _patients(n)
    order = sample_order(n, patient=ordered, priority=OrderPriority.STAT, study_uid=None)
    assert stack.hl7(orm_o01(order)).code is AckCode.AA
    uid, files = stack.study(
        f"head{n}",
        "ct_head",
        instances=3,
        patient_id=imaged.patient_id,
        accession=order.accession_number or "",
    )
    storescu(files, stack.rb.port)
    flagged = _wait(
        lambda: (s := stack.rb.study(uid))["order_link"] is not None and s,
        what="the study correlated",
    )
    assert flagged["order_link"]["state"] == "patient_mismatch" and flagged["order"] is None
    [conflict] = stack.conflicts(kind="order_study", study_uid=uid)
    assert conflict["action"] == "flagged" and conflict["subject"].startswith("accession number")
    assert conflict["held"]["patient_id"] == imaged.patient_id
    assert conflict["claimed"]["patient_id"] == ordered.patient_id
    time.sleep(2.0)
    assert _received(stack.ichai, uid) == 0

    merge = adt_a40(ordered, Patient(imaged.patient_id, ISSUER))
    assert stack.hl7(merge).code is AckCode.AA
    _wait(lambda: _received(stack.ichai, uid) == len(files), what="the STAT vendor got the study")
    linked = stack.rb.study(uid)
    assert linked["patient"]["patient_id"] == ordered.patient_id
    assert linked["order_link"]["state"] == "linked"
    assert linked["order"]["accession_number"] == order.accession_number
    assert stack.conflicts(kind="order_study", study_uid=uid) == []
    [done] = stack.conflicts(kind="order_study", study_uid=uid, all=True)
    assert done["state"] == "resolved" and done["resolved_by"] == "radbridge"
    [audited] = [a for a in stack.audit("patient.merge") if uid in a["detail"]["studies"]]
    assert audited["actor"] == "hl7:RIS^HOSP" and audited["detail"]["relinked"] == [uid]
    assert audited["detail"]["message"] == "ADT^A40" and audited["target"].startswith("patient:")


def test_adt_merges_that_cannot_be_applied_get_ae_and_updates_are_audited(stack: Stack) -> None:
    """ADT^A40 naming a prior patient radbridge does not know gets AE 204 at MRG-1; one
    merging a patient of another issuer (site) gets AE; neither changes anything and both are
    conflicts. ADT^A08 renames the patient on its orders and is audited (no patient data)."""
    n = next(_NUMBERS)
    known, _ = _patients(n)
    assert stack.hl7(orm_o01(sample_order(n, patient=known, study_uid=None))).code is AckCode.AA
    unknown = stack.hl7(adt_a40(known, Patient(f"NOBODY{n}", ISSUER)))
    assert unknown.code is AckCode.AE and "holds no study, order or patient" in unknown.text
    assert b"|MRG^1^1|204^Unknown key identifier^HL70357|E|" in unknown.raw
    elsewhere = Patient(f"PX{n}", "OTHER-SITE", "ROE^ANN")
    assert stack.hl7(adt("A01", elsewhere)).code is AckCode.AA
    across = stack.hl7(adt_a40(known, elsewhere))
    assert across.code is AckCode.AE and "different issuers" in across.text
    refused = stack.conflicts(kind="patient_merge")
    subjects = {c["subject"] for c in refused}
    assert {f"prior patient ID NOBODY{n}", f"prior patient ID PX{n}"} <= subjects
    order = stack.cli_json("orders", "show", f"ACC{n:06d}")
    assert order["patient"]["patient_id"] == known.patient_id

    renamed = replace(known, name="DOE^JANET")
    assert stack.hl7(adt("A08", renamed, control_id=f"A08-{n}")).code is AckCode.AA
    order = stack.cli_json("orders", "show", f"ACC{n:06d}")
    assert order["patient"]["name"] == "DOE^JANET"
    [audited] = [
        a for a in stack.audit("patient.update") if a["detail"]["control_id"] == f"A08-{n}"
    ]
    assert audited["actor"] == "hl7:RIS^HOSP" and audited["detail"]["orders"] == 1
    assert "name" in audited["detail"]["fields"]
    assert "DOE" not in json.dumps(audited) and known.patient_id not in json.dumps(audited)


def _stow(path: Path) -> tuple[bytes, str]:
    boundary = "rb-identity"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_vendor_results_of_another_patient_or_study_are_refused(stack: Stack) -> None:
    """The vendor's SR for its job's study but naming another patient, and one in another
    study radbridge holds, get 0xC409 by C-STORE and as STOW-RS FailureReason; findings that
    reference a series of another study get 409. The job gets no result from any of them;
    the same SR unchanged is taken."""
    n = next(_NUMBERS)
    patient, other = _patients(n)
    uid, files = stack.study(f"chest{n}", "ct_chest", instances=6, patient_id=patient.patient_id)
    mr_uid, mr_files = stack.study(f"mr{n}", "mr_brain", instances=1, patient_id=other.patient_id)
    storescu(files + mr_files, stack.rb.port)

    def job() -> dict[str, Any] | None:
        jobs = [j for j in stack.cli_json("jobs", "list") if j["study_uid"] == uid]
        return jobs[0] if jobs and jobs[0]["state"] == "awaiting_result" else None

    the_job = _wait(job, 60, "the job awaiting its result")
    source = read_source_study(files)
    sr = findings_to_sr(
        parse_findings(json.dumps(head_bleed(source)).encode()), source, result_id=f"r{n}"
    )
    good = stack.folder / f"good{n}.dcm"
    sr.save_as(good, enforce_file_format=True)
    wrong_patient = stack.folder / f"patient{n}.dcm"
    sr.PatientID = other.patient_id
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(wrong_patient, enforce_file_format=True)
    wrong_study = stack.folder / f"study{n}.dcm"
    sr.PatientID = patient.patient_id
    sr.StudyInstanceUID = mr_uid
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(wrong_study, enforce_file_format=True)

    for path in (wrong_patient, wrong_study):
        sent = storescu(
            [path],
            stack.rb.port,
            called_ae="RADBRIDGE_RES",
            calling_ae="LUNGAI",
            check=False,
            extra_args=["-d"],
        )
        assert _statuses(sent) == ["0xc409"]
    body, content_type = _stow(wrong_patient)
    stow = httpx.post(
        f"{stack.http}/results/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {RESULTS_TOKEN}"},
        timeout=15,
    )
    assert stow.status_code == 409, stow.text
    [failed] = stow.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [IDENTITY_CONFLICT]
    mr_series = str(pydicom.dcmread(mr_files[0], stop_before_pixels=True).SeriesInstanceUID)
    findings = head_bleed(source)
    findings["findings"][0]["references"] = [{"series_instance_uid": mr_series}]
    posted = httpx.post(
        f"{stack.http}/results/jobs/{the_job['id']}/findings",
        json=findings,
        headers={"Authorization": f"Bearer {RESULTS_TOKEN}"},
        timeout=15,
    )
    assert posted.status_code == 409, posted.text
    assert "findings[0].references[0].series_instance_uid" in posted.json()["error"]
    assert stack.cli_json("results", "list", "--study", uid) == []
    assert stack.cli_json("results", "list", "--study", mr_uid) == []
    kinds = sorted(c["kind"] for c in stack.conflicts(study_uid=uid))
    assert kinds == ["result_patient", "result_study", "result_study"]
    [by_patient] = stack.conflicts(kind="result_patient", study_uid=uid)
    assert by_patient["count"] == 2  # C-STORE and STOW-RS
    assert by_patient["claimed"]["patient_id"] == other.patient_id

    storescu([good], stack.rb.port, called_ae="RADBRIDGE_RES", calling_ae="LUNGAI")
    [result] = stack.cli_json("results", "list", "--study", uid)
    assert result["job_id"] == the_job["id"]


def test_an_operator_resolves_a_conflict_with_a_note_audited(stack: Stack) -> None:
    """A viewer may list conflicts but not resolve one (403); an operator resolves it with a
    note (who and when kept, audited as conflict.resolve); resolving it again gets 409; the
    CLI resolves another, audited as cli:USER."""
    n = next(_NUMBERS)
    first, other = _patients(n)
    order = sample_order(n, patient=first, study_uid=None)
    assert stack.hl7(orm_o01(order)).code is AckCode.AA
    for control in ("XO", "SC"):
        assert stack.hl7(orm_o01(replace(order, patient=other), control=control)).code is AckCode.AE
    order_id = stack.cli_json("orders", "show", order.accession_number or "")["id"]
    [conflict] = stack.conflicts(order_id=order_id)
    assert conflict["count"] == 2
    path = f"/api/v1/conflicts/{conflict['id']}/resolve"
    note = {"note": "RIS corrected the order for the right patient"}
    assert stack.api("POST", path, json=note).status_code == 403
    resolved = stack.api("POST", path, stack.operator, json=note)
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert body["state"] == "resolved" and body["resolution"] == note["note"]
    assert body["resolved_by"].startswith("token:")
    assert stack.api("POST", path, stack.operator, json=note).status_code == 409
    assert stack.conflicts(order_id=order_id) == []
    [audited] = [
        a for a in stack.audit("conflict.resolve") if a["target"] == f"conflict:{conflict['id']}"
    ]
    assert audited["actor"] == body["resolved_by"] and audited["detail"]["note"] == note["note"]

    assert stack.hl7(orm_o01(replace(order, patient=other), control="XO")).code is AckCode.AE
    [reopened] = stack.conflicts(order_id=order_id)
    assert reopened["id"] != conflict["id"]
    done = stack.rb.cli("conflicts", "resolve", str(reopened["id"]), "--note", "duplicate")
    assert f"conflict {reopened['id']} is resolved" in done.stdout
    shown = stack.cli_json("conflicts", "show", str(reopened["id"]))
    assert shown["state"] == "resolved" and shown["resolved_by"].startswith("cli:")
    assert any(a["target"] == f"conflict:{reopened['id']}" for a in stack.audit("conflict.resolve"))


def test_another_sites_order_with_the_same_accession_does_not_take_the_studys_link(
    stack: Stack,
) -> None:
    """A study linked to its own patient's order keeps that link when an order of another
    patient with the same accession number (another issuer, so another order) arrives: that
    one is flagged and listed, the study's order stays the first."""
    n = next(_NUMBERS)
    own, other = _patients(n)
    first = sample_order(n, patient=own, issuer="SITE-A", study_uid=None)
    assert stack.hl7(omi_o23(first)).code is AckCode.AA
    uid, files = stack.study(
        f"linked{n}",
        "mr_brain",
        instances=1,
        patient_id=own.patient_id,
        accession=first.accession_number or "",
    )
    storescu(files, stack.rb.port)
    linked = _wait(
        lambda: (s := stack.rb.study(uid))["order_link"] is not None and s, what="linked"
    )
    assert linked["order_link"]["state"] == "linked"
    second = replace(
        first, placer_number=f"B{n}", filler_number=f"BF{n}", issuer="SITE-B", patient=other
    )
    assert stack.hl7(omi_o23(second)).code is AckCode.AA
    kept = stack.rb.study(uid)
    assert kept["order_link"]["state"] == "linked"
    assert kept["order"]["placer_number"] == first.placer_number
    [flagged] = stack.conflicts(kind="order_study", study_uid=uid)
    assert flagged["claimed"]["patient_id"] == other.patient_id
    assert flagged["order_id"] != kept["order"]["id"]


def test_a_result_naming_the_patient_merged_into_the_studys_is_taken(stack: Stack) -> None:
    """The vendor saw the study before an ADT^A40 merged its patient into another: its SR
    still names the prior patient and is taken as the job's result (the merge is the audited
    move), while an SR naming an unrelated patient is still refused."""
    n = next(_NUMBERS)
    prior, survivor = _patients(n)
    uid, files = stack.study(f"merged{n}", "ct_chest", instances=6, patient_id=prior.patient_id)
    storescu(files, stack.rb.port)
    the_job = _wait(
        lambda: next(
            (
                j
                for j in stack.cli_json("jobs", "list")
                if j["study_uid"] == uid and j["state"] == "awaiting_result"
            ),
            None,
        ),
        60,
        "the job awaiting its result",
    )
    assert stack.hl7(adt_a40(survivor, Patient(prior.patient_id, ISSUER))).code is AckCode.AA
    assert stack.rb.study(uid)["patient"]["patient_id"] == survivor.patient_id
    source = read_source_study(files)  # the files the vendor got: the prior patient
    sr = findings_to_sr(
        parse_findings(json.dumps(head_bleed(source)).encode()), source, result_id=f"m{n}"
    )
    path = stack.folder / f"merged{n}.dcm"
    sr.save_as(path, enforce_file_format=True)
    sent = storescu(
        [path], stack.rb.port, called_ae="RADBRIDGE_RES", calling_ae="LUNGAI", extra_args=["-d"]
    )
    assert _statuses(sent) == ["0x0000"]
    [result] = stack.cli_json("results", "list", "--study", uid)
    assert result["job_id"] == the_job["id"]
    sr.PatientID = f"STRANGER{n}"
    sr.SOPInstanceUID = pydicom.uid.generate_uid()
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.save_as(path, enforce_file_format=True)
    refused = storescu(
        [path],
        stack.rb.port,
        called_ae="RADBRIDGE_RES",
        calling_ae="LUNGAI",
        check=False,
        extra_args=["-d"],
    )
    assert _statuses(refused) == ["0xc409"]
