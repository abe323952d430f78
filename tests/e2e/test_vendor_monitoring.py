"""Knowing how each AI product performs, through one ``radbridge serve`` (module-scoped):
two vendors (dcmtk ``storescp`` each) read head CTs sent by ``storescu`` and answer with
JSON findings on the results callback; an operator pauses one for maintenance (CLI, API,
console) and its jobs wait while the other vendor's go out, then resume sends them; a
radiologist gives verdicts on findings from the API, from the console in Chromium
(Playwright) and from the signed one-click link an urgent notification carries (a loopback
webhook receiver); the harness RIS sends signed final reports (ORU^R01, MDM^T02; Chinese and
English, with negations) over MLLP and each finding is compared with them; a vendor's SR
with a new software version raises ``version_changed``."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from adapters.harness.hl7_messages import report_mdm_t02, report_oru_r01, sample_order
from adapters.harness.ris import send_message
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from broker.model.domain import Order, Patient
from tests.e2e.test_console import PASSWORDS, VIEWPORT, ensure_chromium
from tests.fhir_receiver import Webhook
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import RADBRIDGE, Radbridge, base_config

# One worker runs the module (xdist_group), in order: the tests share one service and the
# later ones (performance) count what the earlier ones recorded (verdicts, reports).
pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("vendor-monitoring")]

RESULTS_TOKENS = {v: f"{v}-results-token-0123456789" for v in ("lungai", "ichai")}
LINK_SECRET = "verdict-link-secret-0123456789abcdef"
#: The patient of ``generate_study``'s studies.
PATIENT = Patient("PAT0001", None, "DOE^JANE", "19700101", "F")
ICH = {"system": "SCT", "value": "1386000", "meaning": "Intracranial hemorrhage"}
FRACTURE = {"system": "SCT", "value": "71642004", "meaning": "Fracture of skull"}


@dataclass
class Site:
    rb: Radbridge
    lungai: StoreSCP
    ichai: StoreSCP
    webhook: Webhook
    base: str
    operator: dict[str, str]
    folder: Path

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}/api/v1{path}", headers=self.operator, timeout=10, **kwargs
        )

    def jobs_of(self, vendor: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("GET", "/jobs", params={"vendor": vendor}).json()[
            "items"
        ]
        return found

    def jobs(self, study_uid: str) -> dict[str, dict[str, Any]]:
        """The study's jobs by vendor (``GET /api/v1/jobs``)."""
        items = self.api("GET", "/jobs", params={"study_uid": study_uid}).json()["items"]
        return {j["vendor"]: j for j in items}

    def order(self, n: int, **changes: Any) -> Order:
        """The RIS's order of study ``n`` (its accession number is the study's)."""
        values: dict[str, Any] = {"patient": PATIENT, "accession_number": f"ACC-MON-{n}"}
        return sample_order(n, **(values | changes))

    def report(self, message: str) -> str:
        """The RIS sends a report over MLLP; the acknowledgment code."""
        port = int(self.rb.config["hl7"]["listen"]["port"])
        return send_message("127.0.0.1", port, message).code.value

    def matches(self, result_id: int) -> list[tuple[str, str]]:
        found = self.api("GET", f"/results/{result_id}/report-matches").json()
        return [(m["code"], m["outcome"]) for m in found]

    def head_ct(self, n: int) -> tuple[list[Path], str]:
        files = generate_study(
            "ct_head",
            self.folder / f"study{n}",
            instances=3,
            rows=16,
            columns=16,
            accession=f"ACC-MON-{n}",
        )
        storescu(files, self.rb.port)
        study_uid = str(_study_uid(files[0]))
        return files, study_uid

    def answer(
        self, study_uid: str, vendor: str, findings: list[dict[str, Any]], version: str = "1.0"
    ) -> int:
        """The vendor returns JSON findings for its job of the study (once the job is at the
        vendor); the id of the completed result."""
        job = wait_until(
            lambda: (
                (j := self.jobs(study_uid).get(vendor)) and j["state"] == "awaiting_result" and j
            ),
            f"{vendor}'s job at the vendor",
        )
        document = {
            "study_instance_uid": study_uid,
            "algorithm": {"vendor": vendor, "product": vendor.upper(), "version": version},
            "findings": findings,
        }
        answer = httpx.post(
            f"{self.base}/results/jobs/{job['id']}/findings",
            json=document,
            headers={"Authorization": f"Bearer {RESULTS_TOKENS[vendor]}"},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        result_id = int(answer.json()["result_id"])
        wait_until(
            lambda: self.api("GET", f"/results/{result_id}").json()["state"] == "complete",
            "result complete",
        )
        return result_id

    def token(self, role: str) -> dict[str, str]:
        made = self.rb.cli("tokens", "create", "--role", role).stdout.strip()
        return {"Authorization": f"Bearer {made}"}


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """radbridge with an HTTP API and console, and two vendors reading every head CT."""
    folder = tmp_path_factory.mktemp("monitoring")
    http_port = free_port()
    with (
        StoreSCP(folder / "lungai", ae_title="LUNGAI") as lungai,
        StoreSCP(folder / "ichai", ae_title="ICHAI") as ichai,
        StoreSCP(folder / "silentai", ae_title="SILENTAI") as silentai,
        Webhook() as webhook,
    ):
        config = base_config(folder / "rb", free_port())
        config["site"] = {"name": "Monitoring Test Hospital", "timezone": "Asia/Shanghai"}
        config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
        config["hl7"] = {"listen": {"host": "127.0.0.1", "port": free_port()}}
        config["final_reports"] = {
            "keywords": {
                "SCT:1386000": ["颅内出血", "出血", "intracranial hemorrhage", "hemorrhage"],
                "SCT:71642004": ["颅骨骨折", "骨折", "skull fracture", "fracture"],
            }
        }
        config["vendors"] = {
            name: {
                "product": product,
                "transport": {
                    "type": "dicom",
                    "ae_title": scp.ae_title,
                    "host": "127.0.0.1",
                    "port": scp.port,
                },
                "results": {"quiet_seconds": 1.0},
            }
            for name, product, scp in (
                ("lungai", "CT head bleed A", lungai),
                ("ichai", "CT head bleed B", ichai),
                ("silentai", "CT head bleed C (never answers)", silentai),
            )
        }
        config["routes"] = [
            {
                "name": "head-ct",
                "when": {"modality": "CT", "body_part": "HEAD"},
                "send": ["lungai", "ichai", "silentai"],
            }
        ]
        config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
        config["notifications"] = {"webhook": {"url": webhook.url}}
        config["monitoring"] = {
            "check_every": "1s",
            "results_missing": {"window": "1h", "after": "1s", "min_share": 0.5, "min_studies": 3},
        }
        rb = Radbridge(folder / "rb", config)
        for vendor, secret in RESULTS_TOKENS.items():
            rb.env[f"RADBRIDGE_VENDORS__{vendor.upper()}__RESULTS__TOKEN"] = secret
        rb.env["RADBRIDGE_HTTP__VERDICT_LINK_SECRET"] = LINK_SECRET
        rb.start()
        try:
            token = rb.cli("tokens", "create", "--role", "operator", "--name", "ops").stdout
            operator = {"Authorization": f"Bearer {token.strip()}"}
            base = f"http://127.0.0.1:{http_port}"
            yield Site(rb, lungai, ichai, webhook, base, operator, folder)
        finally:
            rb.close()


@contextmanager
def _console(site: Site) -> Iterator[httpx.Client]:
    """A console session opened with the operator's API token."""
    with httpx.Client(base_url=f"{site.base}/console", timeout=10) as client:
        token = site.operator["Authorization"].removeprefix("Bearer ")
        answer = client.post("/login", data={"token": token})
        assert answer.status_code == 303, answer.text
        yield client


def test_paused_vendor_jobs_wait_then_resume_delivers(site: Site) -> None:
    """`vendors pause lungai --until 2h --reason` holds lungai's job pending with no attempt
    while ichai's job for the same study is sent; the API, the dashboard and the vendor's
    jobs page say why and until when; resuming from the console sends it; pause and resume
    are in the audit trail with their actors."""
    paused = site.rb.cli("vendors", "pause", "lungai", "--until", "2h", "--reason", "upgrade v3")
    assert "paused until" in paused.stdout
    listed = json.loads(site.rb.cli("vendors", "list", "--json").stdout)
    assert [v["name"] for v in listed if v["paused"]] == ["lungai"]

    files, study_uid = site.head_ct(1)
    wait_until(lambda: len(site.ichai.files()) >= len(files), "ichai has the study")
    jobs = wait_until(
        lambda: (
            (j := site.jobs(study_uid)).get("ichai", {}).get("state")
            in ("sent", "awaiting_result", "done")
            and j
        ),
        "ichai's job sent",
    )
    assert jobs["lungai"]["state"] == "pending"
    assert jobs["lungai"]["attempts"] == 0
    assert site.lungai.files() == []

    vendor = site.api("GET", "/vendors/lungai", params={"probe": "false"}).json()
    assert vendor["paused"]["reason"] == "upgrade v3"
    assert vendor["paused"]["until"] is not None
    assert site.api("GET", "/vendors/ichai", params={"probe": "false"}).json()["paused"] is None

    with _console(site) as console:
        dashboard = console.get("/").text
        assert re.search(r'data-paused="lungai"', dashboard)
        assert "upgrade v3" in dashboard
        page = console.get("/jobs", params={"vendor": "lungai"}).text
        assert 'data-paused="yes"' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        resumed = console.post(
            "/vendors/lungai/resume", data={"csrf": csrf.group(1), "next": "/console/jobs"}
        )
        assert resumed.status_code == 303, resumed.text

    wait_until(lambda: len(site.lungai.files()) >= len(files), "lungai has the study")
    assert site.api("POST", "/vendors/lungai/resume").status_code == 409  # not paused

    # The API pauses too; a time in the past is refused with the parameter named.
    bad = site.api("POST", "/vendors/ichai/pause", json={"until": "2001-01-01T00:00"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "until"]
    ok = site.api("POST", "/vendors/ichai/pause", json={"reason": "network work"})
    assert ok.json()["paused"]["by"].startswith("token:")
    assert site.api("POST", "/vendors/ichai/resume").json()["paused"] is None

    admin = site.rb.cli("tokens", "create", "--role", "admin").stdout.strip()
    audit = httpx.get(
        f"{site.base}/api/v1/audit",
        headers={"Authorization": f"Bearer {admin}"},
        params={"target": "vendor:lungai"},
        timeout=10,
    ).json()["items"]
    actions = [(a["action"], a["actor"].split(":")[0]) for a in reversed(audit)]
    assert actions == [("vendor.pause", "cli"), ("vendor.resume", "console")]


def test_verdicts_from_the_api_and_the_one_click_link_are_recorded_and_audited(
    site: Site,
) -> None:
    """A reader's verdicts (API) on two findings are kept, the newest counting; a viewer's is
    403 and a finding the result does not have 404. The urgent notification carries signed
    links per finding; opening one records nothing, its button records the verdict (source
    ``link``); a tampered link is refused. Each verdict is in the audit trail."""
    _, study_uid = site.head_ct(2)
    result_id = site.answer(
        study_uid,
        "lungai",
        [
            {"code": ICH, "present": True, "score": 0.93, "urgent": True},
            {"code": FRACTURE, "present": False, "score": 0.04},
        ],
    )
    reader = site.token("reader")
    url = f"{site.base}/api/v1/results/{result_id}"
    given = httpx.post(f"{url}/findings/0/verdict", json={"verdict": "rejected"}, headers=reader)
    assert given.status_code == 201, given.text
    assert given.json()["code"] == "SCT:1386000" and given.json()["actor"].startswith("token:")
    changed = {"verdict": "modified", "corrected_value": "small, 4 mL", "comment": "thin SDH"}
    assert httpx.post(f"{url}/findings/0/verdict", json=changed, headers=reader).status_code == 201
    viewer = site.token("viewer")
    refused = httpx.post(f"{url}/findings/1/verdict", json={"verdict": "accepted"}, headers=viewer)
    assert refused.status_code == 403
    missing = httpx.post(f"{url}/findings/2/verdict", json={"verdict": "accepted"}, headers=reader)
    assert missing.status_code == 404 and "valid: 0 to 1" in missing.text

    # The urgent result's notification, with a link to accept and one to reject each finding.
    notification = wait_until(
        lambda: next(
            (b for _, b in site.webhook.received if b.get("result_id") == result_id), None
        ),
        "urgent notification",
    )
    links = notification["findings"][1]["verdict_links"]
    assert set(links) == {"accepted", "rejected"}
    with httpx.Client(timeout=10) as browser:
        page = browser.get(links["accepted"])
        assert page.status_code == 200 and "Fracture of skull" in page.text
        history = httpx.get(f"{url}/verdicts", headers=reader).json()
        assert [v["finding_index"] for v in history] == [0, 0]  # opening recorded nothing
        # the reject link's payload under the accept link's stamp and signature
        base, accepted = links["accepted"].rsplit("/", 1)
        rejected = links["rejected"].rsplit("/", 1)[1]
        tampered = f"{base}/{rejected.split('.')[0]}.{accepted.split('.', 1)[1]}"
        assert tampered not in links.values()
        assert browser.post(tampered).status_code == 404
        done = browser.post(links["accepted"], data={"comment": ""})
        assert done.status_code == 200 and 'id="verdict-recorded"' in done.text

    history = httpx.get(f"{url}/verdicts", headers=reader).json()
    assert [(v["finding_index"], v["verdict"], v["source"]) for v in history] == [
        (0, "rejected", "api"),
        (0, "modified", "api"),
        (1, "accepted", "link"),
    ]
    assert history[1]["corrected_value"] == "small, 4 mL"
    audit = httpx.get(
        f"{site.base}/api/v1/audit",
        headers=site.token("admin"),
        params={"action": "finding.verdict", "target": f"result:{result_id}"},
    ).json()["items"]
    assert sorted(a["detail"]["verdict"] for a in audit) == ["accepted", "modified", "rejected"]
    assert {a["actor"].split(":")[0] for a in audit} == {"token", "link"}


def test_a_reader_gives_a_verdict_in_the_console(site: Site) -> None:
    """A console user with the role reader opens the study in Chromium and rejects the
    finding with one click; the page shows the verdict and the API has it, by that user."""
    _, study_uid = site.head_ct(3)
    result_id = site.answer(study_uid, "ichai", [{"code": ICH, "present": True, "score": 0.71}])
    name, password = "rad", PASSWORDS["op"]
    add = [RADBRIDGE, "users", "add", name, "--role", "reader", "--password-stdin"]
    subprocess.run(
        [*add, "-c", str(site.rb.config_path)],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        env=site.rb.env,
        timeout=60,
    )
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=ensure_chromium(), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"{site.base}/console/studies/{study_uid}")
            page.fill("input[name=username]", name)
            page.fill("input[name=password]", password)
            page.click("form.stack button[type=submit]")
            finding = page.locator(f"#finding-{result_id}-0")
            finding.locator("button[data-action=reject]").click()
            page.wait_for_selector(f"#finding-{result_id}-0[data-verdict=rejected]")
        finally:
            browser.close()
    history = site.api("GET", f"/results/{result_id}/verdicts").json()
    assert [(v["verdict"], v["actor"], v["source"]) for v in history] == [
        ("rejected", "console:rad", "console")
    ]


def test_final_reports_confirm_or_contradict_each_finding(site: Site) -> None:
    """The RIS's signed reports over MLLP, acknowledged AA once stored (verbatim): a Chinese
    ORU^R01 confirms lungai's bleed and its absent fracture and contradicts ichai's "no
    bleed"; an English MDM^T02 with negations contradicts a bleed; a report that comes
    before the result is compared when the result completes; a report naming another
    patient is AE and compared with nothing; the study page shows each outcome."""
    _, study_uid = site.head_ct(4)
    lungai = site.answer(
        study_uid,
        "lungai",
        [{"code": ICH, "present": True, "score": 0.9}, {"code": FRACTURE, "present": False}],
    )
    ichai = site.answer(study_uid, "ichai", [{"code": ICH, "present": False, "score": 0.2}])
    chinese = report_oru_r01(site.order(4), "右侧颞叶见片状高密度出血，约4ml。\n未见颅骨骨折。")
    assert site.report(chinese) == "AA"
    assert site.matches(lungai) == [("SCT:1386000", "confirmed"), ("SCT:71642004", "confirmed")]
    assert site.matches(ichai) == [("SCT:1386000", "contradicted")]

    # Study 2 (lungai: bleed present, fracture absent) read in English, as a document.
    [earlier] = site.api("GET", "/results", params={"vendor": "lungai"}).json()["items"][1:2]
    english = report_mdm_t02(
        site.order(2), "No evidence of intracranial hemorrhage.\nNo skull fracture."
    )
    assert site.report(english) == "AA"
    assert site.matches(earlier["id"]) == [
        ("SCT:1386000", "contradicted"),
        ("SCT:71642004", "confirmed"),
    ]

    # The report first, the result after.
    _, study_uid = site.head_ct(5)
    assert site.report(report_oru_r01(site.order(5), "Small acute hemorrhage, left.")) == "AA"
    later = site.answer(study_uid, "ichai", [{"code": ICH, "present": True, "score": 0.8}])
    wait_until(lambda: site.matches(later) == [("SCT:1386000", "confirmed")], "compared later")

    other = Patient("SOMEONE-ELSE", None, "ROE^RICHARD", "19500101", "M")
    assert site.report(report_oru_r01(site.order(4, patient=other), "出血")) == "AE"
    assert site.matches(ichai) == [("SCT:1386000", "contradicted")]

    with _console(site) as console:
        page = console.get(f"/studies/{earlier['study_uid']}").text
        assert page.count('data-match="contradicted"') == 1
        assert page.count('data-match="confirmed"') == 1

    database = site.rb.config["storage"]["database"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        kept = [bytes(r[0]) for r in conn.execute("SELECT raw FROM final_reports ORDER BY id")]
    assert kept[0] == chinese.encode() and len(kept) == 4


def test_performance_of_two_vendors_side_by_side(site: Site) -> None:
    """After the studies above: lungai's PPV from verdicts and its agreement with the final
    reports, ichai's beside it; a reader's rejection through the API lowers lungai's PPV;
    the CSV has a row per month and a total; the console page draws the charts and puts
    the two vendors side by side."""

    def figures(vendor: str) -> dict[str, Any]:
        answer = site.api("GET", f"/vendors/{vendor}/performance")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()["total"]
        return found

    lungai = figures("lungai")
    # study 2: the bleed "modified" (counts as right), study 4: the bleed not judged.
    assert (lungai["ppv"], lungai["verdicts"]) == (1.0, {"modified": 1, "accepted": 1})
    # Reports: study 2 contradicts the bleed (FP), confirms no fracture (TN); study 4
    # confirms the bleed (TP) and no fracture (TN).
    assert lungai["reports"] == {"confirmed": 3, "contradicted": 1}
    assert (lungai["sensitivity"], lungai["specificity"]) == (1.0, 0.6667)
    assert lungai["positive_rate"]["SCT:1386000"] == {"findings": 2, "positives": 2, "rate": 1.0}
    assert lungai["turnaround_p50_s"] is not None and lungai["versions"] == {"1.0": 2}

    [study4] = [
        r for r in site.api("GET", "/results", params={"vendor": "lungai"}).json()["items"][:1]
    ]
    rejected = httpx.post(
        f"{site.base}/api/v1/results/{study4['id']}/findings/0/verdict",
        json={"verdict": "rejected"},
        headers=site.token("reader"),
    )
    assert rejected.status_code == 201
    assert figures("lungai")["ppv"] == 0.5
    assert figures("ichai")["ppv"] == 0.0  # rejected in the console

    csv_text = site.api("GET", "/vendors/lungai/performance", params={"format": "csv"}).text
    header, *rows = csv_text.splitlines()
    assert header.startswith("month,studies,results,") and "positive_rate SCT:1386000" in header
    assert rows[-1].startswith("total,")

    with _console(site) as console:
        page = console.get("/vendors/lungai/performance", params={"compare": "ichai"})
        assert page.status_code == 200
        assert page.text.count("<svg viewBox") == 3  # positive rate, two turnarounds
        ppv = re.findall(r'data-figure="ppv".*?</tr>', page.text, re.S)[0]
        assert re.findall(r'data-vendor="(\w+)">([^<]+)<', ppv) == [
            ("lungai", "50.0%"),
            ("ichai", "0.0%"),
        ]
        assert console.get("/vendors/lungai/performance.csv").text == csv_text


def test_a_new_version_in_a_vendor_sr_raises_version_changed(site: Site) -> None:
    """lungai C-STOREs an SR (TID 1500, SoftwareVersions 2.0) to the results AE after JSON
    results of 1.0: one ``version_changed`` alert in the API, on the dashboard and in the
    metrics; the performance figures count the result under 2.0."""
    files, study_uid = site.head_ct(6)
    wait_until(
        lambda: site.jobs(study_uid).get("lungai", {}).get("state") == "awaiting_result",
        "lungai's job at the vendor",
    )
    source = read_source_study(files)
    document = {
        "study_instance_uid": study_uid,
        "algorithm": {"vendor": "lungai", "product": "LUNGAI", "version": "2.0"},
        "findings": [{"code": ICH, "present": True, "score": 0.8}],
    }
    sr = findings_to_sr(parse_findings(json.dumps(document).encode()), source, result_id="v2")
    path = site.folder / "lungai-v2-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    storescu([path], site.rb.port, called_ae="RADBRIDGE_RES", calling_ae="LUNGAI")

    def alerts() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = site.api(
            "GET", "/alerts", params={"vendor": "lungai", "kind": "version_changed"}
        ).json()
        return found

    [alert] = wait_until(alerts, "version_changed alert")
    assert (alert["detail"]["previous"], alert["detail"]["version"]) == ("1.0", "2.0")
    versions = site.api("GET", "/vendors/lungai/performance").json()["total"]["versions"]
    assert versions == {"1.0": 2, "2.0": 1}
    metrics = httpx.get(f"{site.base}/metrics", timeout=10).text
    assert 'radbridge_vendor_alerts_total{kind="version_changed",vendor="lungai"} 1.0' in metrics
    with _console(site) as console:
        assert 'data-kind="version_changed" data-vendor="lungai"' in console.get("/").text


def test_a_vendor_that_never_answers_raises_results_missing(site: Site) -> None:
    """silentai (a storescp that takes every study and returns nothing) raises one
    ``results_missing`` alert once it has taken three studies, and only one in the window
    however often the watch checks (every second here)."""
    assert len(site.jobs_of("silentai")) >= 3

    def missing(vendor: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = site.api(
            "GET", "/alerts", params={"vendor": vendor, "kind": "results_missing"}
        ).json()
        return found

    [alert] = wait_until(lambda: missing("silentai"), "results_missing alert")
    assert alert["detail"]["answered"] == 0 and alert["detail"]["sent"] >= 3
    assert "results for 0 of" in alert["summary"]
    assert [a["id"] for a in missing("silentai")] == [alert["id"]]
