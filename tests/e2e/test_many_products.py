"""Several AI products on one study through one ``radbridge serve``: a silent trial (shadow)
beside the incumbent, a route's combined answer, and two products that disagree.

The products are three vendors (one dcmtk ``storescp`` takes the studies for all three
AE titles) answering with JSON findings on radbridge's callback; the PACS is Orthanc
(checked through its REST API), the RIS an MLLP listener that records each ORU^R01, the
webhook a loopback HTTP endpoint. Routes are chosen by the accession number's prefix.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import hl7
import httpx
import pydicom
import pytest
import yaml

from adapters.dicom.synthetic import generate_study
from adapters.results.sr import read_source_study
from tests.fhir_receiver import Webhook
from tests.peers import Orthanc, StoreSCP, free_port, storescu, wait_until
from tests.ris import Ris
from tests.service import Radbridge, base_config, dicom_block

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow(seconds=20),
    pytest.mark.xdist_group("many_products"),
]

VENDORS = ("lungai", "lungnew", "lungtwo")
TOKENS = {name: f"{name}-{uuid.uuid4().hex}" for name in VENDORS}
CERTIFICATE = "NMPA-20233210001"
NODULE = {"system": "RADLEX", "value": "RID50149", "meaning": "Pulmonary nodule"}
EMPHYSEMA = {"system": "SCT", "value": "87433001", "meaning": "Pulmonary emphysema"}
#: vendor → (maker, product, version), as each product names itself in its findings.
PRODUCTS = {
    "lungai": ("Incumbent AI", "Lung Nodule CT", "2.0"),
    "lungnew": ("Candidate AI", "Nodule Finder", "0.9"),
    "lungtwo": ("Second AI", "ChestScan", "5.1"),
}


def _route(name: str, prefix: str, send: list[str], **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "when": {"accession_number": {"regex": f"^{prefix}"}},
        "send": send,
        "write_back": ["pacs", "ris"],
        **more,
    }


@dataclass
class Products:
    rb: Radbridge
    pacs: Orthanc
    ris: Ris
    hook: Webhook
    http: str
    api_token: str
    folder: Path

    def api(self, path: str, **params: Any) -> Any:
        answer = httpx.get(
            f"{self.http}/api/v1{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.api_token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def console(self, path: str) -> str:
        """A console page's HTML, signed in with the API token (as a browser would)."""
        with httpx.Client(base_url=f"{self.http}/console", timeout=30) as client:
            signed = client.post("/login", data={"token": self.api_token, "next": path})
            assert signed.status_code in (200, 303), signed.text
            page = client.get(path)
            assert page.status_code == 200, page.text
            return page.text

    def jobs(self, study_uid: str) -> dict[str, dict[str, Any]]:
        return {j["vendor"]: j for j in self.api("/jobs", study_uid=study_uid)["items"]}

    def study(self, accession: str, vendors: tuple[str, ...]) -> str:
        """Send a small chest CT; its study UID once every vendor's job awaits a result."""
        files = generate_study(
            "ct_chest",
            self.folder / accession,
            instances=2,
            rows=32,
            columns=32,
            accession=accession,
        )
        storescu(files, self.rb.port)
        uid = read_source_study(files).study_uid
        wait_until(
            lambda: (
                {v: j["state"] for v, j in self.jobs(uid).items()}
                == dict.fromkeys(vendors, "awaiting_result")
            ),
            f"{accession} sent to {', '.join(vendors)}",
        )
        return uid

    def answer(self, study_uid: str, vendor: str, *findings: dict[str, Any]) -> int:
        """The vendor posts its JSON findings; the result's id."""
        job = self.jobs(study_uid)[vendor]
        maker, product, version = PRODUCTS[vendor]
        answer = httpx.post(
            f"{self.http}/results/jobs/{job['id']}/findings",
            json={
                "study_instance_uid": study_uid,
                "algorithm": {"vendor": maker, "product": product, "version": version},
                "findings": list(findings),
                "complete": True,
            },
            headers={"Authorization": f"Bearer {TOKENS[vendor]}"},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        return int(answer.json()["result_id"])

    def done(self, study_uid: str, *vendors: str) -> None:
        wait_until(
            lambda: all(self.jobs(study_uid)[v]["state"] == "done" for v in vendors),
            f"jobs of {', '.join(vendors)} done",
        )

    def pacs_srs(self, study_uid: str) -> list[pydicom.Dataset]:
        found = self.pacs.request(
            "POST",
            "/tools/find",
            json.dumps(
                {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
            ).encode(),
        )
        out = []
        for n, instance in enumerate(found):
            path = self.folder / f"pacs-{study_uid[-8:]}-{n}.dcm"
            data = self.pacs.request("GET", f"/instances/{instance}/file")
            path.write_bytes(data if isinstance(data, bytes) else bytes(data))
            out.append(pydicom.dcmread(path))
        return out

    def orus(self, accession: str) -> list[hl7.Message]:
        messages = [hl7.parse(m) for m in self.ris.received if "ORU^R01" in m]
        return [m for m in messages if str(m.segment("OBR")[18]) == accession]


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every text value of an SR's content tree, in document order."""
    out = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _texts(item)
    return out


def _finding(code: dict[str, str], present: bool, score: float) -> dict[str, Any]:
    return {"code": code, "present": present, "score": score}


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Products]:
    """radbridge with three lung products (lungnew a silent trial), Orthanc as the PACS,
    an MLLP RIS and a webhook; routes: SHD… (incumbent + trial), CMB… (combined answer,
    nodules owned by lungai), SEP… (separate answers, nodules owned by lungtwo, a note in
    the ORU when the products disagree)."""
    folder = tmp_path_factory.mktemp("products")
    http_port = free_port()
    with (
        StoreSCP(folder / "vendors", ae_title="LUNGAI") as scp,
        Orthanc(folder / "pacs") as pacs,
        Ris() as ris,
        Webhook() as hook,
    ):
        config = base_config(folder / "rb", free_port())
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["vendors"] = {
            name: {
                "product": PRODUCTS[name][1],
                "transport": {
                    "type": "dicom",
                    "ae_title": name.upper(),
                    "host": "127.0.0.1",
                    "port": scp.port,
                },
                "billing": {"unit": "study", "price": 20, "currency": "CNY"},
            }
            for name in VENDORS
        }
        config["vendors"]["lungnew"]["mode"] = "shadow"
        config["vendors"]["lungai"]["regulatory"] = {
            "nmpa_class": "III",
            "certificate": CERTIFICATE,
            "valid_from": "2023-01-01",
            "valid_until": "2099-12-31",
        }
        config["targets"] = {
            "pacs": dicom_block(pacs.aet, pacs.dicom_port),
            "ris": {"type": "hl7", "host": "127.0.0.1", "port": ris.port},
        }
        config["notifications"] = {"webhook": {"url": hook.url}}
        config["routes"] = [
            _route("trial", "SHD", ["lungai", "lungnew"]),
            _route(
                "combined",
                "CMB",
                ["lungai", "lungtwo"],
                reconcile="combined",
                owners={"RADLEX:RID50149": "lungai"},
            ),
            _route(
                "separate",
                "SEP",
                ["lungai", "lungtwo"],
                owners={"RID50149": "lungtwo"},
                discordance={"threshold": 0.5, "oru_note": True},
            ),
        ]
        config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
        rb = Radbridge(folder / "rb", config)
        for name, token in TOKENS.items():
            rb.env[f"RADBRIDGE_VENDORS__{name.upper()}__RESULTS__TOKEN"] = token
        rb.start()
        try:
            token = rb.cli("tokens", "create", "--role", "operator").stdout.strip()
            yield Products(rb, pacs, ris, hook, f"http://127.0.0.1:{http_port}", token, folder)
        finally:
            rb.close()


def test_a_shadow_product_is_stored_and_shown_but_only_the_incumbent_is_written_back(
    products: Products,
) -> None:
    """Beside the incumbent, a shadow product gets the study and its findings are stored and
    listed (provenance shadow), but Orthanc holds only the incumbent's SR and the RIS gets
    only the incumbent's ORU; the shadow job is done, its usage is trial and not billed."""
    uid = products.study("SHD1", ("lungai", "lungnew"))
    assert products.jobs(uid)["lungnew"]["shadow"] == "configuration"
    assert products.jobs(uid)["lungai"]["shadow"] is None
    products.answer(uid, "lungnew", _finding(NODULE, True, 0.91))
    products.answer(uid, "lungai", _finding(NODULE, True, 0.88))
    products.done(uid, "lungai", "lungnew")
    wait_until(lambda: products.orus("SHD1"), "the incumbent's ORU")
    wait_until(lambda: products.pacs_srs(uid), "the incumbent's SR")
    [sr] = products.pacs_srs(uid)
    assert sr.ManufacturerModelName == "Lung Nodule CT"
    [oru] = products.orus("SHD1")
    assert {str(obx[17]) for obx in oru.segments("OBX") if str(obx[2]) == "CWE"} == {
        "^Incumbent AI Lung Nodule CT 2.0"
    }
    view = products.api(f"/studies/{uid}/findings")
    shown = {f["provenance"]["vendor"]: f["provenance"]["shadow"] for f in view["findings"]}
    assert shown == {"lungai": False, "lungnew": True}
    assert view["flags"] == []
    assert [f["provenance"]["vendor"] for f in view["findings"]] == ["lungai", "lungnew"]
    assert not [h for h in products.hook.received if h[1]["study_uid"] == uid]
    days = {"from": str(date.today() - timedelta(1)), "to": str(date.today() + timedelta(1))}
    lines = {line["vendor"]: line for line in products.api("/usage", **days)}
    assert lines["lungnew"]["trial"] == 1 and lines["lungnew"]["billable"] == 0
    assert lines["lungai"]["billable"] >= 1
    report = products.api("/trials", vendor="lungnew", **days)
    assert report["against"] == "lungai"  # the live product that read the same study
    assert (report["studies"], report["sent"], report["results"], report["failed"]) == (
        1,
        1,
        1,
        0,
    )
    assert report["positive_rate"] == 1.0 and report["turnaround_p50_seconds"] > 0
    assert (report["cost"], report["currency"]) == ("20", "CNY")
    [nodule] = report["agreement"]
    assert (nodule["code"], nodule["studies"], nodule["percent_agreement"]) == (
        "RID50149",
        1,
        100.0,
    )
    csv_text = products.rb.cli(
        "trials",
        "report",
        "--vendor",
        "lungnew",
        "--from",
        days["from"],
        "--to",
        days["to"],
        "--format",
        "csv",
    ).stdout
    header, row = csv_text.splitlines()
    assert header.startswith("vendor,product,against,") and row.startswith(
        "lungnew,Nodule Finder,lungai,"
    )
    unknown = httpx.get(
        f"{products.http}/api/v1/trials",
        params={"vendor": "lungnwe", **days},
        headers={"Authorization": f"Bearer {products.api_token}"},
    )
    assert unknown.status_code == 404 and "did you mean 'lungnew'" in unknown.json()["detail"]
    study_page = products.console(f"/studies/{uid}")
    assert 'title="configuration">shadow</span>' in study_page  # the trial's job, marked
    page = products.console(f"/trials?vendor=lungnew&from={days['from']}&to={days['to']}")
    assert "Nodule Finder" in page and "Pulmonary nodule" in page and "100.0%" in page


def test_two_agreeing_products_give_one_combined_sr_and_one_oru_with_two_provenances(
    products: Products,
) -> None:
    """A combined route: once both products answered, Orthanc holds one SR whose groups name
    each product's algorithm (the owner's nodule first) and the RIS one ORU with each
    finding's product in OBX-17 and its provenance in an NTE; both originals stay stored."""
    uid = products.study("CMB1", ("lungai", "lungtwo"))
    products.answer(uid, "lungtwo", _finding(NODULE, True, 0.8), _finding(EMPHYSEMA, True, 0.7))
    products.answer(uid, "lungai", _finding(NODULE, True, 0.9))
    products.done(uid, "lungai", "lungtwo")
    wait_until(lambda: products.orus("CMB1"), "the combined ORU")
    wait_until(lambda: products.pacs_srs(uid), "the combined SR")
    [sr] = products.pacs_srs(uid)
    texts = _texts(sr)
    comments = [t for t in texts if t.endswith("owner of this finding") or "; version" in t]
    assert [c.split(";")[0] for c in comments] == [
        "Lung Nodule CT (lungai)",
        "ChestScan (lungtwo)",
        "ChestScan (lungtwo)",
    ]
    assert any(t.startswith("Combined answer of 2 AI products") for t in texts)
    assert "owner of this finding" in comments[0]
    assert "not the owner of this finding" in comments[2]
    [oru] = products.orus("CMB1")
    products_named = [str(obx[17]) for obx in oru.segments("OBX") if str(obx[2]) == "CWE"]
    assert products_named == [
        "^Incumbent AI Lung Nodule CT 2.0",
        "^Second AI ChestScan 5.1",
        "^Second AI ChestScan 5.1",
    ]
    notes = [str(nte[3]) for nte in oru.segments("NTE")]
    assert any("owner of this finding" in n and f"certificate {CERTIFICATE}" in n for n in notes)
    assert any("not the owner of this finding" in n and "lungtwo" in n for n in notes)
    kept = products.api("/results", study_uid=uid)["items"]
    assert sorted(r["vendor"] for r in kept) == ["lungai", "lungtwo"]
    view = products.api(f"/studies/{uid}/findings")
    assert view["flags"] == []
    assert view["findings"][0]["provenance"]["certificate"] == CERTIFICATE
    assert [(f["provenance"]["vendor"], f["owner"]) for f in view["findings"]] == [
        ("lungai", True),
        ("lungtwo", None),
        ("lungtwo", False),
    ]


def test_two_disagreeing_products_flag_the_study_notify_and_keep_both(
    products: Products,
) -> None:
    """Present against absent on one code: the study is `discordant` in the API (both
    findings, the owner marked), the webhook hears of it once, the second ORU carries the
    note, and both results are written back separately (nothing dropped)."""
    uid = products.study("SEP1", ("lungai", "lungtwo"))
    first = products.answer(uid, "lungai", _finding(NODULE, True, 0.9))
    products.done(uid, "lungai")
    second = products.answer(uid, "lungtwo", _finding(NODULE, False, 0.2))
    hooks = wait_until(
        lambda: [b for _, b in products.hook.received if b["study_uid"] == uid],
        "the discordant webhook",
    )
    [body] = hooks
    assert body["event"] == "discordant" and body["result_id"] == second
    assert body["flags"] == ["discordant"]
    [told] = body["discordances"]
    assert told["code"] == "RID50149" and sorted(told["result_ids"]) == sorted([first, second])
    assert told["reason"] == "present vs absent"
    view = products.api(f"/studies/{uid}/findings")
    assert view["flags"] == ["discordant"]
    assert [(f["provenance"]["vendor"], f["owner"], f["discordant"]) for f in view["findings"]] == [
        ("lungtwo", True, True),
        ("lungai", False, True),
    ]
    page = products.console(f"/studies/{uid}")
    assert 'id="discordant"' in page and "Pulmonary nodule" in page and "ChestScan" in page
    products.done(uid, "lungai", "lungtwo")
    wait_until(lambda: len(products.orus("SEP1")) == 2, "both ORUs")
    notes = [str(seg[3]) for oru in products.orus("SEP1") for seg in oru if str(seg[0]) == "NTE"]
    assert sum("Discordant AI findings" in n for n in notes) == 1
    wait_until(lambda: len(products.pacs_srs(uid)) == 2, "both products' SRs")


def test_a_reload_to_live_promotes_the_trial_product(products: Products) -> None:
    """After a reload with ``mode: live`` the former trial product's next result is written
    back: the RIS gets an ORU from each product for the next study."""
    seen = len(_reloads(products.rb))
    config = json.loads(json.dumps(products.rb.config))
    config["vendors"]["lungnew"]["mode"] = "live"
    products.rb.config = config
    products.rb.config_path.write_text(yaml.safe_dump(config))
    assert products.rb.process is not None
    products.rb.process.send_signal(signal.SIGHUP)
    wait_until(lambda: len(_reloads(products.rb)) > seen, "the reload")
    assert _reloads(products.rb)[-1]["event"] == "configuration reloaded"
    uid = products.study("SHD2", ("lungai", "lungnew"))
    assert products.jobs(uid)["lungnew"]["shadow"] is None
    products.answer(uid, "lungnew", _finding(NODULE, True, 0.91))
    products.answer(uid, "lungai", _finding(NODULE, True, 0.88))
    products.done(uid, "lungai", "lungnew")
    wait_until(lambda: len(products.orus("SHD2")) == 2, "an ORU from each product")


def _reloads(rb: Radbridge) -> list[dict[str, Any]]:
    return [
        line
        for line in rb.log_lines()
        if str(line.get("event", "")).startswith("configuration reloaded")
        or str(line.get("event", "")).startswith("configuration not reloaded")
    ]
