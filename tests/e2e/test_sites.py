"""A regional hub with two sites through one ``radbridge serve``: each site's result goes back
to that site's own PACS only, and a site-scoped API token and console user see only
their site.

Site A's PACS is Orthanc (checked through its REST API), site B's a dcmtk ``storescp``;
the AI product is the harness vendor (a DICOM SR by C-STORE to the results AE). Both
sites send a chest CT with ``storescu``; the route writes back to ``site.pacs``. Both
sites' senders connect from loopback, so the sites are told apart by calling AE title
(a third site's sender is pinned to a network it is not on, and is refused). The
isolation test walks the REST API's own route table, so an endpoint added later is
checked too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pydicom
import pytest

from adapters.api import PREFIX, api_routes
from adapters.dicom.synthetic import generate_study
from adapters.harness.hl7_messages import orm_o01, sample_order
from adapters.harness.products import ProductKind
from adapters.harness.ris import send_message
from adapters.harness.vendor import ResultsTarget, SimulatedVendor
from adapters.hl7.ack import AckCode
from adapters.results.sr import read_source_study
from broker.model.domain import Patient
from tests.e2e.test_console import browser  # noqa: F401 (the fixture, used by name)
from tests.peers import Orthanc, StoreSCP, echoscu, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.slow(seconds=35),
    pytest.mark.xdist_group("sites"),
]

#: Every REST API route: (method, path template), from the routers the API is built of.
API_ROUTES = sorted((method, PREFIX + r.path) for r in api_routes() for method in r.methods)


@dataclass
class Hub:
    rb: Radbridge
    http: str
    admin: str
    """An admin token of every site."""
    site_a: str
    """An admin token limited to site A."""
    orthanc: Orthanc
    storescp: StoreSCP
    studies: dict[str, str]
    """site id → the study UID it sent."""
    folder: Path

    def get(self, token: str, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            f"{self.http}{PREFIX}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def api(self, path: str, **params: Any) -> Any:
        answer = self.get(self.admin, path, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def orthanc_study(self, study_uid: str) -> list[str]:
        """The modalities of what Orthanc holds of ``study_uid``, one per series."""
        query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}
        found = self.orthanc.request("POST", "/tools/find", json.dumps(query).encode())
        return [str(i["MainDicomTags"].get("Modality", "?")) for i in found]

    def storescp_studies(self) -> dict[str, list[str]]:
        """Study UID → modalities of what the storescp holds."""
        held: dict[str, list[str]] = {}
        for path in self.storescp.files():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            held.setdefault(str(ds.StudyInstanceUID), []).append(str(ds.get("Modality", "?")))
        return held


def _send(folder: Path, port: int, hl7_port: int, site: str, accession: str) -> str:
    """The site's RIS orders a chest CT (ORM^O01 with its MSH-4), its CT sends it."""
    files = generate_study(
        "ct_chest", folder / accession, instances=2, rows=32, columns=32, accession=accession
    )
    source = read_source_study(files)
    order = sample_order(
        int(accession[-3:]) + (100 if site == "TWB" else 0),
        accession_number=accession,
        study_uid=None,
        patient=Patient(source.patient.patient_id, source.patient.issuer, None, None, None),
    )
    ack = send_message("127.0.0.1", hl7_port, orm_o01(order, facility=site))
    assert ack.code is AckCode.AA, ack.text
    storescu(files, port, calling_ae=f"{site}_CT")
    return source.study_uid


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """radbridge with sites township-a (PACS: Orthanc), township-b (PACS: storescp) and
    clinic-c (a sender on 10.0.0.0/8); no peer is let in but the sites' senders and the
    vendor; one route to the harness lung product writing back to ``site.pacs``. Each of
    A and B sends a chest CT, and the test waits for both results' write-backs."""
    folder = tmp_path_factory.mktemp("sites")
    port, http_port, hl7_port = free_port(), free_port(), free_port()
    with (
        Orthanc(folder / "pacs-a") as orthanc,
        StoreSCP(folder / "pacs-b", ae_title="TWB_PACS") as scp,
        SimulatedVendor(
            ProductKind.LUNG_NODULE_CT,
            folder / "vendor",
            ae_title="LUNGAI",
            delay=0.1,
            target=ResultsTarget(ae_title="RADBRIDGE_RES", port=port),
        ) as vendor,
    ):
        config = base_config(folder / "rb", port, allow_any_peer=False)
        config["dicom"]["peers"] = [{"ae_title": "LUNGAI", "host": "127.0.0.1"}]
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["hl7"] = {"listen": {"host": "127.0.0.1", "port": hl7_port}}

        def pacs(ae: str, pacs_port: int) -> dict[str, Any]:
            return {"type": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": pacs_port}

        config["sites"] = {
            "township-a": {
                "name": "Township A Health Centre",
                "timezone": "Asia/Shanghai",
                "senders": [{"ae_title": "TWA_CT", "host": "127.0.0.0/8"}],
                "hl7_facility": "TWA",
                "targets": {"pacs": pacs(orthanc.aet, orthanc.dicom_port)},
            },
            "township-b": {
                "name": "Township B Hospital",
                "senders": [{"ae_title": "TWB_CT", "host": "127.0.0.1"}],
                "hl7_facility": "TWB",
                "targets": {"pacs": pacs("TWB_PACS", scp.port)},
            },
            "clinic-c": {
                "name": "Clinic C",
                "senders": [{"ae_title": "SITEC_CT", "host": "10.0.0.0/8"}],
            },
        }
        config["vendors"] = {
            "lungai": {
                "product": "CT lung nodule",
                "transport": {
                    "type": "dicom",
                    "ae_title": "LUNGAI",
                    "host": "127.0.0.1",
                    "port": vendor.port,
                },
                "results": {"quiet_seconds": 0.3},
                "billing": {"unit": "study", "price": 30, "currency": "CNY"},
            }
        }
        config["routes"] = [
            {
                "name": "chest-ct",
                "when": {"modality": "CT"},
                "sites": ["township-a", "township-b"],
                "send": ["lungai"],
                "write_back": ["site.pacs"],
            }
        ]
        config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
        rb = Radbridge(folder / "rb", config)
        rb.start()
        try:
            admin = rb.cli("tokens", "create", "--role", "admin").stdout.strip()
            site_a = rb.cli(
                "tokens", "create", "--role", "admin", "--site", "township-a"
            ).stdout.strip()
            studies = {
                "township-a": _send(folder, port, hl7_port, "TWA", "TWA001"),
                "township-b": _send(folder, port, hl7_port, "TWB", "TWB001"),
            }
            hub = Hub(
                rb,
                f"http://127.0.0.1:{http_port}",
                admin,
                site_a,
                orthanc,
                scp,
                studies,
                folder,
            )

            def both_written() -> bool:
                jobs = hub.api("/jobs")["items"]
                return len(jobs) == 2 and all(j["state"] == "done" for j in jobs)

            wait_until(both_written, "both sites' jobs done (results written back)", 120)
            yield hub
        finally:
            rb.close()


def test_each_sites_result_goes_back_to_its_own_pacs_only(hub: Hub) -> None:
    """Site A's SR is in Orthanc and site B's in the storescp; neither PACS holds anything
    of the other site's study; each study is attributed to its site."""
    a, b = hub.studies["township-a"], hub.studies["township-b"]
    assert hub.orthanc_study(a) == ["SR"]
    assert hub.orthanc_study(b) == []
    held = hub.storescp_studies()
    assert held == {b: ["SR"]}
    assert hub.api(f"/studies/{a}")["site"] == "township-a"
    assert hub.api(f"/studies/{b}")["site"] == "township-b"
    linked = hub.api("/orders/TWB001")
    assert linked["site"] == "township-b"
    assert [s["study_uid"] for s in linked["studies"]] == [b]
    targets = {d["target"] for d in hub.api("/deliveries")["items"]}
    assert targets == {"site.township-a.pacs", "site.township-b.pacs"}


def test_usage_is_split_by_site(hub: Hub) -> None:
    """The usage report has one line per site, each counting its own study (on the site's
    own calendar: township A's day is Shanghai's, which is a day ahead of UTC's from 16:00
    UTC)."""
    today = datetime.now(UTC).date()
    days = [today, datetime.now(ZoneInfo("Asia/Shanghai")).date()]
    window = {"from": str(min(days).replace(day=1)), "to": str(max(days))}
    lines = hub.api("/usage", **window)
    assert sorted((line["site"], line["studies"]) for line in lines) == [
        ("township-a", 1),
        ("township-b", 1),
    ]
    only_b = hub.api("/usage", site="township-b", **{"from": str(today), "to": str(today)})
    assert [line["site"] for line in only_b] == ["township-b"]


def test_unattributable_senders_are_refused(hub: Hub) -> None:
    """A site's AE title from outside its network, and an AE title of no site and no peer,
    are refused at association (calling AE title not recognised); a site's sender gets in."""
    assert echoscu(hub.rb.port, calling_ae="TWA_CT").returncode == 0
    for calling in ("SITEC_CT", "CT01"):
        refused = echoscu(hub.rb.port, calling_ae=calling, check=False)
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_a_site_token_sees_its_site_and_nothing_of_another(hub: Hub) -> None:
    """Site A's token lists only site A's study, order, job, result, write-back and audit
    rows, and
    gets site A's study and order; site B's are 404, as for records that do not exist."""
    a, b = hub.studies["township-a"], hub.studies["township-b"]
    orders = hub.get(hub.site_a, "/orders").json()["items"]
    assert [(o["accession_number"], o["site"]) for o in orders] == [("TWA001", "township-a")]
    assert hub.get(hub.site_a, "/orders/TWA001").status_code == 200
    assert hub.get(hub.site_a, "/orders/TWB001").status_code == 404
    listed = hub.get(hub.site_a, "/studies").json()["items"]
    assert [s["study_uid"] for s in listed] == [a]
    assert hub.get(hub.site_a, f"/studies/{a}").status_code == 200
    assert [j["study_uid"] for j in hub.get(hub.site_a, "/jobs").json()["items"]] == [a]
    assert [r["study_uid"] for r in hub.get(hub.site_a, "/results").json()["items"]] == [a]
    deliveries = hub.get(hub.site_a, "/deliveries").json()["items"]
    assert [d["target"] for d in deliveries] == ["site.township-a.pacs"]
    job_a = hub.api("/jobs", study_uid=a)["items"][0]["id"]
    audited = hub.get(hub.site_a, "/audit").json()["items"]
    delivery_a = hub.api("/deliveries", job_id=job_a)["items"][0]["id"]
    assert {(e["action"], e["target"]) for e in audited} == {
        ("study.sent", f"job:{job_a}"),
        ("result.written", f"delivery:{delivery_a}"),
    }
    job_b = hub.api("/jobs", study_uid=b)["items"][0]["id"]
    for path in (f"/studies/{b}", f"/jobs/{job_b}", f"/studies/{b}/timeline"):
        answer = hub.get(hub.site_a, path)
        assert answer.status_code == 404, (path, answer.text)
        assert b not in answer.text
    retried = httpx.post(
        f"{hub.http}{PREFIX}/jobs/{job_b}/retry",
        headers={"Authorization": f"Bearer {hub.site_a}"},
        timeout=30,
    )
    assert retried.status_code == 404


CONSOLE_PASSWORD = "site-a-password-1"
SITE_B_WORDS = ("TWB001", "township-b", "TWB_PACS", "TWB_CT")


def test_a_site_console_user_walks_every_page_and_sees_only_its_site(
    hub: Hub,
    browser: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    """A console admin limited to site A (``users sites``) signs in to the dashboard in
    Chromium and walks every page of the navigation: each answers 200 and names nothing of
    site B (its study, order, id, PACS or sender); the dashboard, studies, jobs and usage
    pages show site A's study, job and usage line; site B's study page is 404."""
    a, b = hub.studies["township-a"], hub.studies["township-b"]
    hub.rb.add_user("nurse_a", "admin", CONSOLE_PASSWORD)
    hub.rb.cli("users", "sites", "nurse_a", "--site", "township-a")
    page = browser.new_context().new_page()
    page.goto(f"{hub.http}/console/")
    page.fill("input[name=username]", "nurse_a")
    page.fill("input[name=password]", CONSOLE_PASSWORD)
    page.click("form.stack button[type=submit]")
    page.wait_for_url(f"{hub.http}/console/")
    links = page.eval_on_selector_all("nav a", "links => links.map(a => a.href)")
    assert len(links) == 8, links  # dashboard … trials, and the audit trail of an admin
    seen: dict[str, str] = {}
    for link in links:
        answer = page.goto(link)
        assert answer is not None and answer.status == 200, (link, answer and answer.status)
        text = page.content()
        for word in (b, *SITE_B_WORDS):
            assert word not in text, f"{link} shows {word}"
        seen[link.removeprefix(f"{hub.http}/console")] = text
    assert a in seen["/"] and a in seen["/studies"] and a in seen["/jobs"]
    assert "township-a" in seen["/usage"]
    assert "job:" in seen["/audit"]  # its site's job's rows
    study = page.goto(f"{hub.http}/console/studies/{a}")
    assert study is not None and study.status == 200
    hidden = page.goto(f"{hub.http}/console/studies/{b}")
    assert hidden is not None and hidden.status == 404
    assert "TWB001" not in page.content()


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: ids.get(m.group(1), "1"), path)


@pytest.fixture(scope="module")
def site_b_ids(hub: Hub) -> dict[str, str]:
    """Site B's study, job, result, delivery and order, as path parameters."""
    b = hub.studies["township-b"]
    job = hub.api("/jobs", study_uid=b)["items"][0]
    result = hub.api("/results", study_uid=b)["items"][0]
    delivery = hub.api("/deliveries", job_id=job["id"])["items"][0]
    return {
        "study_uid": b,
        "job_id": str(job["id"]),
        "result_id": str(result["id"]),
        "delivery_id": str(delivery["id"]),
        "key": "TWB001",
        "name": "lungai",
    }


@pytest.mark.parametrize(("method", "path"), API_ROUTES, ids=[f"{m} {p}" for m, p in API_ROUTES])
def test_no_api_route_shows_another_sites_records(
    hub: Hub, site_b_ids: dict[str, str], method: str, path: str
) -> None:
    """Every REST API route (from the routers the API is built of), called by site A's admin
    token with site B's study, job, result, delivery and order in its path and query,
    answers 404 or a body that names nothing of site B; a route not made site-aware
    answers 404."""
    b = site_b_ids["study_uid"]
    today = str(datetime.now(UTC).date())
    query = {"study_uid": b, "from": today, "to": today, "job_id": site_b_ids["job_id"]}
    answer = httpx.request(
        method,
        f"{hub.http}{_fill(path, site_b_ids)}",
        params=query,
        headers={"Authorization": f"Bearer {hub.site_a}"},
        json={} if method in ("POST", "PUT", "PATCH") else None,
        timeout=30,
    )
    assert answer.status_code in (200, 404), answer.text
    for secret in (b, "TWB001", "township-b", "TWB_PACS"):
        assert secret not in answer.text, f"{method} {path} shows {secret}"
