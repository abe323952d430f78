"""The whole loop through one ``radbridge serve``: the RIS orders (python ``hl7``'s MLLP
client), the modality sends the study (``storescu``), radbridge delivers it to the lung
vendor (dcmtk ``storescp``), the vendor returns its result — an SR by C-STORE to the
results AE, or JSON findings to the callback — and radbridge writes it back to the PACS
(Orthanc, checked through its REST API) and the RIS (an MLLP listener that records the
ORU^R01 and answers AA)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import httpx
import pydicom
import pytest
from hl7.client import MLLPClient

from adapters.dicom.synthetic import generate_study
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from broker.model.domain import OrderPriority, Patient
from tests.hl7_messages import orm_o01, sample_order
from tests.integration.test_results_sr import _dciodvfy, head_bleed
from tests.peers import Orthanc, StoreSCP, free_port, storescu, wait_until
from tests.ris import Ris
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("results_flow")]

TOKEN = "lungai-results-" + uuid.uuid4().hex
PATIENT = Patient("PAT0001", None, "DOE^JANE", "19700101", "F")
"""The patient of ``generate_study``'s studies."""


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    return wait_until(predicate, what, timeout, interval=0.2)


@dataclass
class Loop:
    rb: Radbridge
    vendor: StoreSCP
    pacs: Orthanc
    ris: Ris
    http: str
    folder: Path

    def ordered_study(self, n: int) -> tuple[list[Path], str]:
        """Send an ORM^O01 (answered AA), then its chest CT; wait until the vendor has it."""
        order = sample_order(n, patient=PATIENT, priority=OrderPriority.ROUTINE, study_uid=None)
        accession = order.accession_number or ""
        with MLLPClient("127.0.0.1", int(self.rb.config["hl7"]["listen"]["port"])) as client:
            ack = hl7.parse(client.send_message(orm_o01(order)).decode())
        assert str(ack.segment("MSA")[1]) == "AA"
        files = generate_study(
            "ct_head",
            self.folder / f"study{n}",
            instances=6,
            rows=32,
            columns=32,
            accession=accession,
        )
        before = len(self.vendor.files())
        storescu(files, self.rb.port)
        _wait(lambda: len(self.vendor.files()) >= before + len(files), what="vendor has study")
        return files, accession

    def job(self, study_uid: str) -> dict[str, Any]:
        jobs = json.loads(self.rb.cli("jobs", "list", "--json").stdout)
        [job] = [j for j in jobs if j["study_uid"] == study_uid]
        return job

    def wait_done(self, study_uid: str) -> dict[str, Any]:
        done: dict[str, Any] = _wait(
            lambda: (j := self.job(study_uid))["state"] == "done" and j, 45, "job done"
        )
        return done

    def pacs_sr(self, study_uid: str) -> dict[str, Any]:
        """The one SR Orthanc holds for the study (its instance JSON with tags)."""
        found = self.pacs.request(
            "POST",
            "/tools/find",
            json.dumps(
                {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
            ).encode(),
        )
        [instance] = found
        tags: dict[str, Any] = self.pacs.get(f"/instances/{instance}/simplified-tags")
        tags["_id"] = instance
        return tags

    def oru_for(self, accession: str) -> hl7.Message:
        messages = [hl7.parse(m) for m in self.ris.received if "ORU^R01" in m]
        [oru] = [m for m in messages if str(m.segment("OBR")[18]) == accession]
        return oru


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """radbridge with the hl7 orders listener, a head-CT bleed vendor (storescp) whose results
    come back to RADBRIDGE_RES, and write-back to Orthanc (dicom) and the RIS (hl7)."""
    folder = tmp_path_factory.mktemp("loop")
    http_port = free_port()
    with (
        StoreSCP(folder / "ichai", ae_title="ICHAI") as vendor,
        Orthanc(folder / "pacs") as pacs,
        Ris() as ris,
    ):
        config = base_config(folder / "rb", free_port())
        config["hl7"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["vendors"] = {
            "ichai": {
                "product": "Head CT bleed triage",
                "transport": {
                    "type": "dicom",
                    "ae_title": "ICHAI",
                    "host": "127.0.0.1",
                    "port": vendor.port,
                },
                "results": {"quiet_seconds": 1.0},
            }
        }
        config["targets"] = {
            "pacs": dicom_block(pacs.aet, pacs.dicom_port),
            "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
        }
        config["routes"] = [
            {
                "name": "head-ct-bleed",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["ichai"],
                "priority": "stat",
                "write_back": ["pacs", "ris"],
            }
        ]
        config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
        rb = Radbridge(folder / "rb", config)
        rb.env["RADBRIDGE_VENDORS__ICHAI__RESULTS__TOKEN"] = TOKEN
        rb.start()
        try:
            yield Loop(rb, vendor, pacs, ris, f"http://127.0.0.1:{http_port}", folder)
        finally:
            rb.close()


def test_vendor_sr_reaches_the_pacs_and_the_ris_acknowledges_the_oru(loop: Loop) -> None:
    """An SR the vendor C-STOREs to the results AE ends in Orthanc under the study, and the
    RIS receives (and acknowledges) an ORU^R01 with the accession number in OBR-18, result
    status P, one OBX per finding; the job ends `done`."""
    files, accession = loop.ordered_study(1)
    source = read_source_study(files)
    sr = findings_to_sr(
        parse_findings(json.dumps(head_bleed(source)).encode()), source, result_id="vendor-1"
    )
    path = loop.folder / "vendor-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    storescu([path], loop.rb.port, called_ae="RADBRIDGE_RES", calling_ae="ICHAI")
    job = loop.wait_done(source.study_uid)
    assert job["vendor"] == "ichai"
    held = loop.pacs_sr(source.study_uid)
    assert held["SOPInstanceUID"] == sr.SOPInstanceUID
    assert held["AccessionNumber"] == accession
    oru = loop.oru_for(accession)
    obr = oru.segment("OBR")
    assert str(obr[25]) == "P"
    assert (str(obr[2]), str(obr[3])) == ("PL000001", "FL000001")  # the order's numbers
    observations = list(oru.segments("OBX"))
    assert all(str(obx[11]) == "P" for obx in observations)
    text = str(oru)
    assert source.study_uid in text  # the study is referenced
    assert any("1386000" in str(obx[3]) for obx in observations)  # the hemorrhage, coded
    [bleed] = [obx for obx in observations if "1386000" in str(obx[3])]  # read from the SR
    assert str(bleed[5]).startswith("121053") and str(bleed[8]) == "AA"  # present, urgent
    assert any("230690007" in str(obx[3]) and str(obx[8]) == "N" for obx in observations)
    assert len(loop.ris.acked_at) >= 1


def test_json_findings_become_a_valid_sr_in_the_pacs(loop: Loop) -> None:
    """JSON findings posted to the callback become a TID 1500 Comprehensive SR that Orthanc
    holds under the study and that passes dciodvfy; the RIS gets the ORU too."""
    files, accession = loop.ordered_study(2)
    source = read_source_study(files)
    job = loop.job(source.study_uid)
    _wait(lambda: loop.job(source.study_uid)["state"] == "awaiting_result", what="job sent")
    answer = httpx.post(
        f"{loop.http}/results/jobs/{job['id']}/findings",
        json=head_bleed(source) | {"complete": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 202, answer.text
    loop.wait_done(source.study_uid)
    held = loop.pacs_sr(source.study_uid)
    assert held["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    data = loop.pacs.request("GET", f"/instances/{held['_id']}/file")
    path = loop.folder / "from-pacs.dcm"
    path.write_bytes(data if isinstance(data, bytes) else bytes(data))
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == source.study_uid
    report = _dciodvfy(path)
    assert not [line for line in report if line.startswith("Error")], report
    assert str(loop.oru_for(accession).segment("OBR")[18]) == accession
