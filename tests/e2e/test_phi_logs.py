"""No patient data in the service's log unless ``logging.phi`` is on, through a whole run.

A real ``radbridge serve`` (with the harness's simulated RIS, HTTP AI vendor returning JSON
findings, and PACS) takes an order by HL7, a study by C-STORE, delivers it, writes the SR and
the ORU back; then hostile and broken peers: API requests with bad and too-weak tokens and to
wrong paths naming studies and orders, an HL7 frame that does not begin with MSH, a data set
that contradicts its C-STORE request, a study and orders that name another patient (DICOM, HL7
and FHIR), FHIR orders valid and invalid, and findings posted with a bad token and with a bad
body. Every log line is then searched for the patients' names, IDs, birth dates, accession
numbers and the studies', series' and instances' UIDs. With ``logging.phi: true`` the same
run must show them, so the search can fail.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from adapters.harness.hostile import HostilePeer, pdu
from adapters.harness.hostile import datasets as crafted
from adapters.harness.ris import make_order, order_message, send_message
from adapters.harness.scenario import expect, load_scenario, steps
from adapters.harness.scenario.world import World
from adapters.hl7.framing import frame
from broker.model.domain import Role
from broker.store.api_tokens import ApiTokens
from tests.fhir_data import FHIR_JSON, service_request, typed

pytestmark = pytest.mark.timeout(180)

SCENARIO = """\
name: phi-in-logs
radbridge:
  logging: {{phi: {phi}}}
  vendors:
    chestdx:
      product: Chest X-ray triage
      kind: chest-dx
      transport: {{type: http, url: "${{vendor.chestdx.url}}"}}
  targets:
    pacs: {{type: dicom, ae_title: PACS, host: 127.0.0.1, port: "${{pacs.dicom_port}}"}}
    ris: {{type: hl7, host: 127.0.0.1, port: "${{ris.port}}"}}
  routes:
    - name: chest-dx-triage
      when: {{modality: [DX, CR], body_part: CHEST}}
      send: [chestdx]
      write_back: [pacs, ris]
simulators:
  vendors:
    chestdx: {{product: chest-xray, result: json, http: true, delay: 0}}
  pacs: {{kind: builtin}}
  ris: {{}}
studies:
  cxr1: {{kind: dx_chest, accession: {accession}, patient_id: {patient_id}, instances: 1,
         rows: 16, columns: 16}}
steps:
  - send_order: {{study: cxr1, procedure: DXCHEST, procedure_text: Chest X-ray}}
  - send_study: {{study: cxr1, calling_ae: DX01}}
  - expect: {{pacs_holds_sr: cxr1, within: 30s}}
  - expect: {{ris_receives_oru: {{study: cxr1}}, within: 20s}}
"""

#: The harness's patient (DICOM and HL7): name and birth dates as the simulators write them.
HARNESS_PATIENT = ("DOE^JANE", "19650412")


def _mllp(port: int, payload: bytes) -> bytes:
    """One frame over a fresh connection; the raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(frame(payload))
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def _hostile_peers(world: World, ids: dict[str, str], study_uid: str) -> None:
    """Everything a careless or hostile peer does, each naming a patient or a study."""
    # HL7: a frame that does not begin with MSH (a PID with another patient) -> AR.
    pid = f"PID|1||{ids['hl7_pid']}^^^HOSP||{ids['hl7_name']}||{ids['hl7_birth']}|F\r"
    assert b"MSA|AR" in _mllp(world.hl7_port, pid.encode())
    # HL7: the study's accession number ordered for another patient -> AE (identity).
    other = make_order(
        accession=world.studies["cxr1"].spec.accession,
        patient_id=ids["conflict_pid"],
        patient_name=ids["conflict_name"],
        birth_date=ids["conflict_birth"],
    )
    ack = send_message("127.0.0.1", world.hl7_port, order_message("ORM^O01", other))
    assert ack.code.value == "AE", ack
    # DICOM: a data set whose SOP Instance UID is not the request's, and one of the study
    # that names another patient.
    bad_sop = f"2.25.{uuid.uuid4().int}"
    series = f"2.25.{uuid.uuid4().int}"
    ids.update(bad_sop=bad_sop, bad_series=series)
    with HostilePeer(world.rb_port) as peer:
        assert peer.associate(
            contexts=[(crafted.CT_IMAGE_STORAGE, [pdu.EXPLICIT_VR_LITTLE_ENDIAN])]
        )
        ident = crafted.Identity(study_uid, series, bad_sop, patient_id=ids["dicom_pid"])
        answer = peer.c_store(crafted.dataset(ident), crafted.CT_IMAGE_STORAGE, "1.2.3.4")
        assert answer is not None and answer.status != 0
        other_sop = f"2.25.{uuid.uuid4().int}"
        ids["other_sop"] = other_sop
        ident = crafted.Identity(study_uid, series, other_sop, patient_id=ids["dicom_pid"])
        answer = peer.c_store(crafted.dataset(ident), crafted.CT_IMAGE_STORAGE, other_sop)
        assert answer is not None and answer.status != 0
        peer.release()
    # HTTP: bad tokens, a viewer where an operator is needed, wrong paths; FHIR orders.
    http = httpx.Client(base_url=world.http_url, timeout=15)
    viewer = _token(world, "viewer")
    operator = _token(world, "operator")
    bad = {"Authorization": "Bearer not-a-token"}
    accession = world.studies["cxr1"].spec.accession
    for path in (f"/api/v1/studies/{study_uid}", f"/api/v1/orders/{accession}"):
        assert http.get(path, headers=bad).status_code == 401
        assert http.get(path + "/nothing-here", headers=bad).status_code in (401, 404)
        assert http.get(path + "x", headers=_bearer(viewer)).status_code in (404, 422)
    assert http.post("/api/v1/jobs/1/retry", headers=_bearer(viewer)).status_code == 403
    assert http.get(f"/fhir/ServiceRequest/{accession}", headers=bad).status_code == 401
    fhir = {**_bearer(operator), "Content-Type": FHIR_JSON}
    good = service_request(ids["fhir_accession"])
    good["contained"][0]["identifier"] = [typed("MR", ids["fhir_pid"])]
    good["contained"][0]["name"] = [{"family": ids["fhir_family"], "given": ["Ann"]}]
    assert http.post("/fhir/ServiceRequest", json=good, headers=fhir).status_code == 201
    broken = service_request(ids["fhir_bad_accession"])
    broken["contained"][0]["identifier"] = [typed("MR", ids["fhir_pid"])]
    broken["contained"][0]["birthDate"] = ids["fhir_bad_birth"]
    assert http.post("/fhir/ServiceRequest", json=broken, headers=fhir).status_code == 400
    conflict = service_request(accession)
    conflict["contained"][0]["identifier"] = [typed("MR", ids["fhir_conflict_pid"])]
    assert http.post("/fhir/ServiceRequest", json=conflict, headers=fhir).status_code >= 400
    # Results: findings for the study with a bad token, and with a body that is not findings.
    findings = {"study_instance_uid": study_uid, "algorithm": {}, "findings": []}
    url = "/results/jobs/1/findings"
    assert http.post(url, json=findings, headers=bad).status_code in (401, 403)
    token = {"Authorization": f"Bearer {world.vendor_tokens['chestdx']}"}
    assert http.post(url, json=findings, headers=token).status_code >= 400
    http.close()


def _token(world: World, role: str) -> str:
    """A new API token, straight into the service's store (as ``radbridge tokens create``)."""
    return ApiTokens(world.engine).create(Role(role), role)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _run(folder: Path, phi: bool) -> tuple[list[str], dict[str, str]]:
    """The whole run; every line of the service's log, and the identifiers it used."""
    tag = uuid.uuid4().hex[:6].upper()
    ids = {
        "accession": f"AC{tag}",
        "patient_id": f"PT{tag}",
        "hl7_pid": f"HP{tag}",
        "hl7_name": f"QUIXOTE{tag}^ALONSO",
        "hl7_birth": "19311107",
        "conflict_pid": f"CP{tag}",
        "conflict_name": f"ZAPHOD{tag}^B",
        "conflict_birth": "19420311",
        "dicom_pid": f"DP{tag}",
        "fhir_accession": f"FA{tag}",
        "fhir_bad_accession": f"FB{tag}",
        "fhir_pid": f"FP{tag}",
        "fhir_family": f"Marple{tag}",
        "fhir_bad_birth": f"1890-13-{tag}",
        "fhir_conflict_pid": f"FC{tag}",
    }
    text = SCENARIO.format(phi=str(phi).lower(), **ids)
    path = folder / "scenario.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    scenario = load_scenario(path)
    world = World(scenario, folder / "world")
    try:
        world.make_studies()
        world.start_simulators()
        world.write_config()
        world.radbridge.start()
        for step in scenario.steps:
            if step.expect is not None:
                expect.check(world, step.expect)
            else:
                steps.STEPS[step.action](world, step.argument)
        study = world.studies["cxr1"]
        for file in study.files:
            ds = dcmread(file, stop_before_pixels=True)
            ids[f"series:{file.name}"] = str(ds.SeriesInstanceUID)
            ids[f"sop:{file.name}"] = str(ds.SOPInstanceUID)
            ids["dicom_name"] = str(ds.PatientName)
            ids["dicom_birth"] = str(ds.PatientBirthDate)
        ids["study_uid"] = study.uid
        _hostile_peers(world, ids, study.uid)
    finally:
        world.close()

    ids["harness_name"], ids["harness_birth"] = HARNESS_PATIENT
    lines = world.radbridge.log_path.read_text(errors="replace").splitlines()
    return lines, {k: v for k, v in ids.items() if v}


def _found(lines: list[str], ids: dict[str, str]) -> dict[str, list[str]]:
    """Each identifier that some log line carries, with (the start of) those lines."""
    found: dict[str, list[str]] = {}
    for name, value in ids.items():
        variants = {v for v in (value, value.replace("^", " "), *value.split("^")) if len(v) > 3}
        hits = [line[:300] for line in lines if any(v in line for v in variants)]
        if hits:
            found[name] = hits[:3]
    return found


@pytest.mark.slow
def test_no_patient_or_study_identifier_reaches_the_log_with_phi_off(tmp_path: Path) -> None:
    """logging.phi false: not one log line (ours, a library's, a traceback) carries a name,
    patient ID, birth date, accession number or study/series/instance UID of the run."""
    lines, ids = _run(tmp_path, phi=False)
    assert len(lines) > 30
    found = _found(lines, ids)
    assert not found, "\n".join(f"{k}: {v}" for k, v in found.items())


@pytest.mark.slow
def test_the_same_run_with_phi_on_logs_the_identifiers(tmp_path: Path) -> None:
    """logging.phi true: the same run logs the identifiers (the search above can fail)."""
    lines, ids = _run(tmp_path, phi=True)
    found = _found(lines, ids)
    assert {"study_uid", "conflict_pid", "dicom_pid"} <= set(found), sorted(found)
    assert any(k.startswith("sop:") for k in found), sorted(found)
