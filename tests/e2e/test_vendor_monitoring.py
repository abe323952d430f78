"""Knowing how each AI product performs, through one ``radbridge serve`` (module-scoped):
two vendors (dcmtk ``storescp`` each) read head CTs sent by ``storescu`` and answer with
JSON findings on the results callback; an operator pauses one for maintenance (CLI, API,
console) and its jobs wait while the other vendor's go out, then resume sends them; a
radiologist gives verdicts on findings from the API, from the console in Chromium
(Playwright) and from the signed one-click link an urgent notification carries (a loopback
webhook receiver); the harness RIS sends signed final reports (ORU^R01, MDM^T02; Chinese and
English, with negations) over MLLP and each finding is compared with them; a vendor's SR
with a new software version raises ``version_changed``; a vendor that never answers raises
``results_missing``; each vendor alert reaches the webhook once. Two simulated vendors (the
harness's, in this process) have canaries: the one in ``never-answer`` mode raises
``canary_failed``, the other passes, and no canary is written back, billed or routed.

Every test sets up what it needs: the steps that later figures count (verdicts, the console
verdict, final reports) are module fixtures, so the tests pass in any order."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from adapters.harness.hl7_messages import report_mdm_t02, report_oru_r01, sample_order
from adapters.harness.ris import send_message
from adapters.harness.vendor import ResultsTarget, SimulatedVendor
from adapters.results.findings import parse_findings
from adapters.results.sr import findings_to_sr, read_source_study
from broker.engine.metrics import STORE_CACHE_SECONDS
from broker.model.domain import Order, Patient
from tests.e2e.test_console import PASSWORDS, VIEWPORT, ensure_chromium
from tests.fhir_receiver import Webhook
from tests.peers import StoreSCP, free_port, storescu, wait_until
from tests.service import Radbridge, base_config

# One worker runs the module (xdist_group): the tests share one service. The figures the
# performance test counts come from module fixtures, not from other tests having run.
pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.slow(seconds=45),
    pytest.mark.xdist_group("vendor-monitoring"),
]

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
    canaryai: SimulatedVendor
    deadai: SimulatedVendor

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

    def alerts(self, vendor: str, kind: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api(
            "GET", "/alerts", params={"vendor": vendor, "kind": kind}
        ).json()
        return found

    def notified(self, event: str, vendor: str) -> list[dict[str, Any]]:
        """The webhook's notifications of ``event`` about ``vendor``, each once (a retry after
        a timed-out POST is the same notification: the same id, the Idempotency-Key)."""
        found = {
            b["id"]: b
            for _, b in self.webhook.received
            if b["event"] == event and b["vendor"] == vendor
        }
        return list(found.values())

    def token(self, role: str) -> dict[str, str]:
        made = self.rb.cli("tokens", "create", "--role", role).stdout.strip()
        return {"Authorization": f"Bearer {made}"}


def _study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """radbridge with an HTTP API and console, and two vendors reading every head CT."""
    folder = tmp_path_factory.mktemp("monitoring")
    http_port, rb_port = free_port(), free_port()
    results_ae = ResultsTarget(ae_title="RADBRIDGE_RES", port=rb_port)
    with (
        SimulatedVendor(
            "head-ct-bleed", folder / "canaryai", ae_title="CANARYAI", delay=0.1, target=results_ae
        ) as canaryai,
        SimulatedVendor(
            "head-ct-bleed", folder / "deadai", ae_title="DEADAI", fault="never-answer"
        ) as deadai,
        StoreSCP(folder / "lungai", ae_title="LUNGAI") as lungai,
        StoreSCP(folder / "ichai", ae_title="ICHAI") as ichai,
        StoreSCP(folder / "silentai", ae_title="SILENTAI") as silentai,
        Webhook() as webhook,
    ):
        config = base_config(folder / "rb", rb_port)
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
                ("canaryai", "CT head bleed D", canaryai),
                ("deadai", "CT head bleed E (never answers)", deadai),
            )
        }
        # Canaries: every hour (the first at start), small head CTs; deadai's send hangs (past
        # its 3 s timeout the one attempt is spent: the run fails long before its deadline).
        for name, deadline in (("canaryai", "60s"), ("deadai", "10m")):
            config["vendors"][name]["canary"] = {
                "every": "1h",
                "deadline": deadline,
                "template": "ct_head",
                "instances": 2,
            }
            config["vendors"][name]["billing"] = {"unit": "study", "price": 30, "currency": "CNY"}
        config["vendors"]["deadai"]["timeout"] = "3s"
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
            yield Site(rb, lungai, ichai, webhook, base, operator, folder, canaryai, deadai)
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
    before = len(site.lungai.files())  # what lungai had of the other tests' studies
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
    assert len(site.lungai.files()) == before

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

    wait_until(lambda: len(site.lungai.files()) >= before + len(files), "lungai has the study")
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


@dataclass
class Verdicts:
    """Study 2 (lungai: a bleed present and urgent, a fracture absent) and what a reader, a
    viewer and the one-click link did to its findings."""

    result_id: int
    answers: dict[str, httpx.Response]
    notification: dict[str, Any]
    history_after_opening: list[dict[str, Any]]


@pytest.fixture(scope="module")
def verdicts(site: Site) -> Verdicts:
    """A reader's verdicts (API) on study 2's findings, a viewer's and an out-of-range one;
    then the urgent notification's signed link opened, tampered with and clicked."""
    _, study_uid = site.head_ct(2)
    result_id = site.answer(
        study_uid,
        "lungai",
        [
            {"code": ICH, "present": True, "score": 0.93, "urgent": True},
            {"code": FRACTURE, "present": False, "score": 0.04},
        ],
    )
    reader, viewer = site.token("reader"), site.token("viewer")
    url = f"{site.base}/api/v1/results/{result_id}"
    changed = {"verdict": "modified", "corrected_value": "small, 4 mL", "comment": "thin SDH"}
    answers = {
        "given": httpx.post(
            f"{url}/findings/0/verdict", json={"verdict": "rejected"}, headers=reader
        ),
        "changed": httpx.post(f"{url}/findings/0/verdict", json=changed, headers=reader),
        "refused": httpx.post(
            f"{url}/findings/1/verdict", json={"verdict": "accepted"}, headers=viewer
        ),
        "missing": httpx.post(
            f"{url}/findings/2/verdict", json={"verdict": "accepted"}, headers=reader
        ),
    }
    # The urgent result's notification, with a link to accept and one to reject each finding.
    notification = wait_until(
        lambda: next(
            (b for _, b in site.webhook.received if b.get("result_id") == result_id), None
        ),
        "urgent notification",
    )
    links = notification["findings"][1]["verdict_links"]
    with httpx.Client(timeout=10) as browser:
        answers["opened"] = browser.get(links["accepted"])
        opened = httpx.get(f"{url}/verdicts", headers=reader).json()
        # the reject link's payload under the accept link's stamp and signature
        base, accepted = links["accepted"].rsplit("/", 1)
        rejected = links["rejected"].rsplit("/", 1)[1]
        tampered = f"{base}/{rejected.split('.')[0]}.{accepted.split('.', 1)[1]}"
        assert tampered not in links.values()
        answers["tampered"] = browser.post(tampered)
        answers["clicked"] = browser.post(links["accepted"], data={"comment": ""})
    return Verdicts(result_id, answers, notification, opened)


def test_verdicts_from_the_api_and_the_one_click_link_are_recorded_and_audited(
    site: Site, verdicts: Verdicts
) -> None:
    """A reader's verdicts (API) on two findings are kept, the newest counting; a viewer's is
    403 and a finding the result does not have 404. The urgent notification carries signed
    links per finding; opening one records nothing, its button records the verdict (source
    ``link``); a tampered link is refused. Each verdict is in the audit trail."""
    result_id, answers = verdicts.result_id, verdicts.answers
    given = answers["given"]
    assert given.status_code == 201, given.text
    assert given.json()["code"] == "SCT:1386000" and given.json()["actor"].startswith("token:")
    assert answers["changed"].status_code == 201
    assert answers["refused"].status_code == 403
    missing = answers["missing"]
    assert missing.status_code == 404 and "valid: 0 to 1" in missing.text

    links = verdicts.notification["findings"][1]["verdict_links"]
    assert set(links) == {"accepted", "rejected"}
    page = answers["opened"]
    assert page.status_code == 200 and "Fracture of skull" in page.text
    opened = verdicts.history_after_opening
    assert [v["finding_index"] for v in opened] == [0, 0]  # opening recorded nothing
    assert answers["tampered"].status_code == 404
    done = answers["clicked"]
    assert done.status_code == 200 and 'id="verdict-recorded"' in done.text

    url = f"{site.base}/api/v1/results/{result_id}"
    history = httpx.get(f"{url}/verdicts", headers=site.token("reader")).json()
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


@pytest.fixture(scope="module")
def console_verdict(site: Site) -> tuple[int, list[dict[str, Any]]]:
    """A console user with the role reader rejects study 3's ichai finding in Chromium; the
    result's id and its verdicts from the API."""
    _, study_uid = site.head_ct(3)
    result_id = site.answer(study_uid, "ichai", [{"code": ICH, "present": True, "score": 0.71}])
    name, password = "rad", PASSWORDS["op"]
    site.rb.add_user(name, "reader", password)
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
    return result_id, site.api("GET", f"/results/{result_id}/verdicts").json()


def test_a_reader_gives_a_verdict_in_the_console(
    console_verdict: tuple[int, list[dict[str, Any]]],
) -> None:
    """A console user with the role reader opens the study in Chromium and rejects the
    finding with one click; the page shows the verdict and the API has it, by that user."""
    _, history = console_verdict
    assert [(v["verdict"], v["actor"], v["source"]) for v in history] == [
        ("rejected", "console:rad", "console")
    ]


@dataclass
class Reports:
    """The final reports the RIS sent for studies 2, 4 and 5, and what they were compared
    with."""

    lungai: int
    ichai: int
    later: int
    chinese: str
    acks: dict[str, str]


@pytest.fixture(scope="module")
def reports(site: Site, verdicts: Verdicts) -> Reports:
    """Study 4 read by lungai and ichai, then its Chinese ORU^R01; study 2's English MDM^T02;
    study 5's report before its result; a report of study 4 naming another patient."""
    _, study_uid = site.head_ct(4)
    lungai = site.answer(
        study_uid,
        "lungai",
        [{"code": ICH, "present": True, "score": 0.9}, {"code": FRACTURE, "present": False}],
    )
    ichai = site.answer(study_uid, "ichai", [{"code": ICH, "present": False, "score": 0.2}])
    chinese = report_oru_r01(site.order(4), "右侧颞叶见片状高密度出血，约4ml。\n未见颅骨骨折。")
    acks = {"chinese": site.report(chinese)}
    english = report_mdm_t02(
        site.order(2), "No evidence of intracranial hemorrhage.\nNo skull fracture."
    )
    acks["english"] = site.report(english)
    _, study_uid = site.head_ct(5)
    acks["before"] = site.report(report_oru_r01(site.order(5), "Small acute hemorrhage, left."))
    later = site.answer(study_uid, "ichai", [{"code": ICH, "present": True, "score": 0.8}])
    other = Patient("SOMEONE-ELSE", None, "ROE^RICHARD", "19500101", "M")
    acks["other patient"] = site.report(report_oru_r01(site.order(4, patient=other), "出血"))
    return Reports(lungai, ichai, later, chinese, acks)


def test_final_reports_confirm_or_contradict_each_finding(
    site: Site, verdicts: Verdicts, reports: Reports
) -> None:
    """The RIS's signed reports over MLLP, acknowledged AA once stored (verbatim): a Chinese
    ORU^R01 confirms lungai's bleed and its absent fracture and contradicts ichai's "no
    bleed"; an English MDM^T02 with negations contradicts a bleed; a report that comes
    before the result is compared when the result completes; a report naming another
    patient is AE and compared with nothing; the study page shows each outcome."""
    assert reports.acks == {
        "chinese": "AA",
        "english": "AA",
        "before": "AA",
        "other patient": "AE",
    }
    assert site.matches(reports.lungai) == [
        ("SCT:1386000", "confirmed"),
        ("SCT:71642004", "confirmed"),
    ]
    assert site.matches(reports.ichai) == [("SCT:1386000", "contradicted")]
    # Study 2 (lungai: bleed present, fracture absent) read in English, as a document.
    assert site.matches(verdicts.result_id) == [
        ("SCT:1386000", "contradicted"),
        ("SCT:71642004", "confirmed"),
    ]
    # The report first, the result after.
    wait_until(
        lambda: site.matches(reports.later) == [("SCT:1386000", "confirmed")], "compared later"
    )

    study2 = site.api("GET", f"/results/{verdicts.result_id}").json()["study_uid"]
    with _console(site) as console:
        page = console.get(f"/studies/{study2}").text
        assert page.count('data-match="contradicted"') == 1
        assert page.count('data-match="confirmed"') == 1

    database = site.rb.config["storage"]["database"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        kept = [bytes(r[0]) for r in conn.execute("SELECT raw FROM final_reports ORDER BY id")]
    assert kept[0] == reports.chinese.encode() and len(kept) == 4


def test_performance_of_two_vendors_side_by_side(
    site: Site,
    verdicts: Verdicts,
    console_verdict: tuple[int, list[dict[str, Any]]],
    reports: Reports,
) -> None:
    """With the verdicts, the console verdict and the final reports above: lungai's PPV from
    verdicts and its agreement with the final reports, ichai's beside it; a reader's
    rejection through the API lowers lungai's PPV; the CSV has a row per month and a total;
    the console page draws the charts and puts the two vendors side by side."""

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

    rejected = httpx.post(
        f"{site.base}/api/v1/results/{reports.lungai}/findings/0/verdict",
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
    """ichai answers study 6 with JSON results of 1.0, then C-STOREs an SR (TID 1500,
    SoftwareVersions 2.0) for study 7 to the results AE: one ``version_changed`` alert in
    the API, on the dashboard, in the metrics and at the webhook; the performance figures
    count the result under 2.0."""
    _, study_uid = site.head_ct(6)
    site.answer(study_uid, "ichai", [{"code": ICH, "present": False, "score": 0.1}])
    files, study_uid = site.head_ct(7)
    wait_until(
        lambda: site.jobs(study_uid).get("ichai", {}).get("state") == "awaiting_result",
        "ichai's job at the vendor",
    )
    source = read_source_study(files)
    document = {
        "study_instance_uid": study_uid,
        "algorithm": {"vendor": "ichai", "product": "ICHAI", "version": "2.0"},
        "findings": [{"code": ICH, "present": True, "score": 0.8}],
    }
    sr = findings_to_sr(parse_findings(json.dumps(document).encode()), source, result_id="v2")
    path = site.folder / "ichai-v2-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    storescu([path], site.rb.port, called_ae="RADBRIDGE_RES", calling_ae="ICHAI")

    [alert] = wait_until(lambda: site.alerts("ichai", "version_changed"), "version_changed")
    assert (alert["detail"]["previous"], alert["detail"]["version"]) == ("1.0", "2.0")
    versions = site.api("GET", "/vendors/ichai/performance").json()["total"]["versions"]
    assert versions["2.0"] == 1
    metrics = httpx.get(f"{site.base}/metrics", timeout=10).text
    assert 'radbridge_vendor_alerts_total{kind="version_changed",vendor="ichai"} 1.0' in metrics
    with _console(site) as console:
        assert 'data-kind="version_changed" data-vendor="ichai"' in console.get("/").text
    [notice] = wait_until(lambda: site.notified("version_changed", "ichai"), "webhook notice")
    assert notice["alert"]["id"] == alert["id"] and notice["alert"]["detail"]["version"] == "2.0"


def test_a_vendor_that_never_answers_raises_results_missing(site: Site) -> None:
    """silentai (a storescp that takes every study and returns nothing) raises one
    ``results_missing`` alert once it has taken three studies, and only one in the window
    (an hour: a test that crosses the hour sees the next one) however often the watch checks
    (every second here); the webhook hears of each once."""
    n = 100
    while len(site.jobs_of("silentai")) < 3:  # the studies other tests sent count too
        site.head_ct(n)
        n += 1

    *_, alert = wait_until(lambda: site.alerts("silentai", "results_missing"), "results_missing")
    assert alert["detail"]["answered"] == 0 and alert["detail"]["sent"] >= 3
    assert "results for 0 of" in alert["summary"]

    def noticed() -> dict[str, Any] | None:
        found = site.notified("results_missing", "silentai")
        return next((n for n in found if n["alert"]["id"] == alert["id"]), None)

    notice = wait_until(noticed, "webhook notice")
    assert notice["study_uid"] == "" and notice["alert"]["detail"]["sent"] >= 3
    time.sleep(2)  # two more checks of the watch: nothing new in the window (the hour)
    found = site.alerts("silentai", "results_missing")
    assert len({a["detail"]["key"] for a in found}) == len(found)  # one per window
    wait_until(
        lambda: len(site.notified("results_missing", "silentai")) == len(found), "one notice each"
    )


def test_a_canary_to_a_vendor_that_never_answers_raises_canary_failed(site: Site) -> None:
    """deadai (the harness vendor in ``never-answer`` mode) gets its canary when the service
    starts and answers nothing: its one attempt (a canary's default, not the vendor's five
    retries that would hold its lane) times out after 3 s, the job is dead and the run fails
    then, not at its 10 min deadline: one ``canary_failed`` alert saying the send was given
    up, in the metrics, on the dashboard and at the webhook (naming the canary's study).
    Its dead job is the canary's outcome, not work for an operator: it is in no list of dead
    jobs (API, CLI, console) and no count of jobs by state (metrics, vendor figures,
    dashboard); the job itself, its study's jobs and the route ``(canary)`` still show it."""
    [alert] = wait_until(lambda: site.alerts("deadai", "canary_failed"), "canary_failed")
    assert "the send was given up (dead after 1 attempt(s))" in alert["summary"]
    [notice] = wait_until(lambda: site.notified("canary_failed", "deadai"), "webhook notice")
    assert notice["alert"]["id"] == alert["id"]
    canary_job = site.api("GET", "/jobs", params={"vendor": "deadai"}).json()["items"][-1]
    assert notice["study_uid"] == canary_job["study_uid"] and canary_job["route"] == "(canary)"
    assert (canary_job["state"], canary_job["attempts"]) == ("dead", 1)
    alerted = 'radbridge_vendor_alerts_total{kind="canary_failed",vendor="deadai"} 1.0'

    def scraped() -> str | None:
        text = httpx.get(f"{site.base}/metrics", timeout=10).text
        return text if alerted in text else None

    # The store's figures are cached up to STORE_CACHE_SECONDS (another test may have just
    # scraped them).
    metrics = wait_until(scraped, "the alert in the metrics", timeout=STORE_CACHE_SECONDS + 10)
    assert 'radbridge_jobs{state="dead",vendor="deadai"} 0.0' in metrics
    with _console(site) as console:
        dashboard = console.get("/").text
        assert 'data-kind="canary_failed" data-vendor="deadai"' in dashboard
        assert f'id="job-{canary_job["id"]}"' not in dashboard
        dead_page = console.get("/jobs", params={"state": "dead"}).text
        assert f'id="job-{canary_job["id"]}"' not in dead_page

    def ids(params: dict[str, str]) -> list[int]:
        return [j["id"] for j in site.api("GET", "/jobs", params=params).json()["items"]]

    assert canary_job["id"] not in ids({"state": "dead"})
    assert canary_job["id"] not in ids({"state": "dead", "vendor": "deadai"})
    listed = site.rb.cli("jobs", "list", "--state", "dead", "--json").stdout
    assert canary_job["id"] not in [j["id"] for j in json.loads(listed)]
    assert site.api("GET", "/vendors/deadai", params={"probe": "false"}).json()["jobs"] == {}
    assert canary_job["id"] in ids({"state": "dead", "route": "(canary)"})
    assert canary_job["id"] in ids({"state": "dead", "study_uid": canary_job["study_uid"]})
    shown = site.api("GET", f"/jobs/{canary_job['id']}").json()
    assert (shown["state"], shown["history"][-1]["to_state"]) == ("dead", "dead")


def test_a_canary_run_now_passes_and_is_never_written_back_billed_or_routed(site: Site) -> None:
    """`radbridge vendors canary canaryai --wait`: the harness vendor gets a synthetic head
    CT marked as a test in the private block RADBRIDGE CANARY and answers with an SR (an
    urgent finding): the run passes; its job is done with no delivery and no notification;
    no usage is counted for canaryai; no other vendor got the study; it is audited."""
    ran = site.rb.cli("vendors", "canary", "canaryai", "--wait")
    assert ran.returncode == 0, ran.stderr
    run = re.search(r"canary (\d+) sent to canaryai: job (\d+), study ([\d.]+)", ran.stdout)
    assert run is not None and ran.stdout.rstrip().endswith(": passed")
    job_id, study_uid = int(run.group(2)), run.group(3)

    assert set(site.jobs(study_uid)) == {"canaryai"}
    job = site.api("GET", f"/jobs/{job_id}").json()
    assert (job["route"], job["state"]) == ("(canary)", "done")
    deliveries = site.api("GET", "/deliveries", params={"job_id": job_id}).json()["items"]
    assert deliveries == []
    assert not [b for _, b in site.webhook.received if b.get("study_uid") == study_uid]
    today = site.api("GET", "/usage", params={"from": _today(), "to": _today()})
    assert today.status_code == 200
    assert not [line for line in today.json() if line["vendor"] == "canaryai"]
    assert site.alerts("canaryai", "canary_failed") == []

    received = [r for r in site.canaryai.received if r.study_uid == study_uid]
    assert received
    block = pydicom.dcmread(received[0].path).private_block(0x0011, "RADBRIDGE CANARY")
    assert (block[0x01].value, block[0x02].value) == ("TEST", "canaryai")
    audit = httpx.get(
        f"{site.base}/api/v1/audit",
        headers=site.token("admin"),
        params={"action": "vendor.canary", "target": "vendor:canaryai"},
        timeout=10,
    ).json()["items"]
    assert [(a["detail"]["job_id"], a["actor"].split(":")[0]) for a in audit] == [(job_id, "cli")]


def _today() -> str:
    return datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
