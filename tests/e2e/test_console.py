"""The operations console in headless Chromium (Playwright) against a real ``radbridge serve``.

A chest CT goes storescu → radbridge → a vendor that is down, so its job dies;
an operator finds the study in the browser, retries the job once the vendor
(dcmtk storescp) is up and sees it delivered; a viewer sees no retry button,
gets 403 when posting one, and no patient name or ID anywhere; an admin sees
the retry in the audit trail. Screenshots at 1366x768 are kept in
``test-artifacts/console/`` (git-ignored).

Chromium is Debian's (``apt-get install -y chromium``, installed here when
missing); Playwright never downloads a browser.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest

from adapters.dicom.synthetic import generate_study
from tests.peers import StoreSCP, _install_debian_packages, free_port, storescu, wait_until
from tests.service import ROOT, Radbridge, base_config

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow(seconds=30)]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "console"
VIEWPORT = {"width": 1366, "height": 768}
PATIENT_NAME = "CONSOLEPATIENT^ZELDA"
PATIENT_ID = "PID-7319-PHI"
ACCESSION = "ACC-CONSOLE-55"
PASSWORDS = {"op": "operator-secret-1", "view": "viewer-secret-1", "boss": "admin-secret-1"}
ROLES = {"op": "operator", "view": "viewer", "boss": "admin"}


def ensure_chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (no Playwright download)."""
    if not CHROMIUM.exists():
        _install_debian_packages(["chromium"])
    return str(CHROMIUM)


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_until(predicate, "condition", timeout, interval=0.1)


def _jobs(rb: Radbridge) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(rb.cli("jobs", "list", "--json").stdout)
    return found


def _config(folder: Path, vendor_port: int, http_port: int) -> dict[str, Any]:
    config = base_config(folder, free_port())
    config["site"] = {"name": "Console Test Hospital", "timezone": "UTC"}
    config["http"] = {"listen": {"host": "127.0.0.1", "port": http_port}}
    config["vendors"] = {
        "lungai": {
            "product": "CT lung nodule",
            "transport": {
                "type": "dicom",
                "ae_title": "LUNGAI",
                "host": "127.0.0.1",
                "port": vendor_port,
            },
            "retries": 2,
            "regulatory": {
                "nmpa_class": "III",
                "certificate": "国械注准20233210001",
                "valid_until": "2099-12-31",
            },
        }
    }
    config["routes"] = [
        {
            "name": "chest-ct-lung-nodule",
            "when": {"modality": "CT", "body_part": {"in": ["CHEST", "LUNG"]}},
            "send": ["lungai"],
        }
    ]
    config["delivery"] = {"backoff_base_seconds": 0.2, "backoff_cap_seconds": 0.5}
    config["contracts"] = {
        "lungai-package": {
            "vendor": "lungai",
            "kind": "package",
            "quota": 5,
            "start": datetime.now(UTC).date().isoformat(),
            "price": 3000,
            "currency": "CNY",
            "payer": "hospital",
            "price_code": "330100017",
            "province": "Zhejiang",
        }
    }
    return config


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright."""
    executable = ensure_chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


def _login(browser: Any, base: str, name: str) -> Any:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{base}/console/")
    assert "/console/login" in page.url  # not signed in: the login form
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("form.stack button[type=submit]")
    page.wait_for_url(f"{base}/console/")
    return page


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def test_operator_retries_a_dead_job_in_the_browser_viewer_sees_no_phi(
    radbridge_factory: Callable[..., Radbridge], browser: Any, tmp_path: Path
) -> None:
    """Dead job → operator retries it in the console → delivered; viewer: no retry, no PHI."""
    vendor_port, http_port = free_port(), free_port()
    rb = radbridge_factory(config=_config(tmp_path / "rb", vendor_port, http_port))
    for name, password in PASSWORDS.items():
        rb.add_user(name, ROLES[name], password)
    files = generate_study(
        "ct_chest",
        tmp_path / "ct",
        instances=6,
        rows=64,
        columns=64,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        accession=ACCESSION,
    )
    birth_date = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientBirthDate)
    storescu(files, rb.port)
    _wait(lambda: any(j["state"] == "dead" for j in _jobs(rb)))
    [job] = _jobs(rb)
    study_uid = job["study_uid"]
    base = f"http://127.0.0.1:{http_port}"
    print(f"\nconsole screenshots: {ARTIFACTS}")

    # A viewer: the dead job without a retry button, no patient data, and a POST is refused.
    viewer = _login(browser, base, "view")
    viewer.goto(f"{base}/console/studies/{study_uid}")
    row = viewer.locator(f"#job-{job['id']}")
    assert row.locator("[data-state=dead]").count() == 1
    assert row.locator("button[data-action=retry]").count() == 0
    _shot(viewer, "viewer-study")
    for path in ("/console/", "/console/studies", f"/console/studies/{study_uid}", "/console/jobs"):
        viewer.goto(base + path)
        html = viewer.content()
        for secret in (PATIENT_ID, ACCESSION, "CONSOLEPATIENT", "ZELDA", birth_date):
            assert secret not in html, f"{secret} shown to a viewer on {path}"
    csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
    refused = viewer.request.post(
        f"{base}/console/jobs/{job['id']}/retry", form={"csrf": csrf or ""}
    )
    assert refused.status == 403
    assert viewer.request.get(f"{base}/console/audit").status == 403
    assert _jobs(rb)[0]["state"] == "dead"

    # An operator: the dashboard lists the dead job; the study page shows the patient.
    page = _login(browser, base, "op")
    assert page.locator("#dead").count() == 1
    assert page.locator(f"#job-{job['id']} button[data-action=retry]").count() == 1
    _shot(page, "operator-dashboard")
    page.click("a:text('Studies')")
    page.click(f"tr[data-study-uid='{study_uid}'] td.time a")
    page.wait_for_url(re.compile(re.escape(f"/console/studies/{study_uid}")))
    assert page.locator("#patient-id").inner_text() == PATIENT_ID
    assert "CONSOLEPATIENT" in page.locator("#patient-name").inner_text()
    timeline = page.locator(f"#job-{job['id']}-timeline ol.timeline li")
    assert timeline.count() >= 4  # pending, sending, failed …, dead
    _shot(page, "operator-study-dead")

    # The vendor comes up; the operator retries; the row refreshes itself until delivered.
    with StoreSCP(tmp_path / "lungai", ae_title="LUNGAI", port=vendor_port) as vendor:
        page.click(f"#job-{job['id']} button[data-action=retry]")
        page.locator(f"#job-{job['id']} [data-state=awaiting_result]").wait_for(timeout=30_000)
        _wait(lambda: len(vendor.files()) >= len(files))
    _shot(page, "operator-study-delivered")
    page.reload()
    regulatory = page.locator(f"#regulatory-{job['id']}").inner_text()
    assert "NMPA class III 国械注准20233210001 valid to 2099-12-31" in regulatory
    assert page.locator(f"#job-{job['id']}-timeline li.state-awaiting_result").count() >= 1

    # Usage of the month, as CSV.
    page.goto(f"{base}/console/usage")
    _shot(page, "operator-usage")
    csv = page.request.get(base + page.locator("#csv-vendor").get_attribute("href"))
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text().splitlines()[0].startswith("vendor,product,site,day")
    assert "lungai" in csv.text()
    # The package: one use of five since it began today; at one a day, four days left.
    cells = page.locator("#contracts tr[data-contract=lungai-package] td").all_inner_texts()
    runs_out = (datetime.now(UTC).date() + timedelta(days=3)).isoformat()
    assert cells[8:] == ["1", "5", "4", "1.0", runs_out]
    assert cells[1] == ""  # every site's
    assert cells[6] == "330100017 (Zhejiang)"

    # Routes: explain this study.
    page.goto(f"{base}/console/routes")
    page.fill("input[name=study_uid]", study_uid)
    page.click("section.explain button[type=submit]")
    # Delivered already: the route matches, and nothing new is sent.
    assert page.locator("#explain-outcome").inner_text() == "nothing_new"
    assert "chest-ct-lung-nodule" in page.locator("table.explain tr.matched").inner_text()
    _shot(page, "operator-routes-explain")

    # An admin: the retry is in the audit trail, by the operator.
    admin = _login(browser, base, "boss")
    admin.goto(f"{base}/console/audit?action=job.retry")
    rows = admin.locator("tr.audit-row[data-action='job.retry']")
    assert rows.count() == 1
    assert "console:op" in rows.first.inner_text() and f"job:{job['id']}" in rows.first.inner_text()
    _shot(admin, "admin-audit")
