"""The console and the CLI in Simplified Chinese, times in the site's timezone (Asia/Shanghai).

One ``radbridge serve`` and one headless Chromium (the fixtures of
:mod:`tests.e2e.test_console`) for every check: a study goes to a vendor that
is down so its job dies (retries 1) and to another that is down too (retries 5, its
next attempt 30 s on); a user whose language an admin set to zh_CN (``radbridge
users language``) sees the dashboard, jobs and study pages in Chinese with
``+08:00`` times and none of the English labels; a browser asking for zh-CN
gets the login page in Chinese; an English user switches to Chinese on the
page; ``RADBRIDGE_LANG=zh_CN radbridge jobs list`` prints Chinese headers and
times with the site's offset. The dashboard shows both vendors down (red) with the
next retry, and a study sent while it is open appears without a reload (htmx).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.dicom.synthetic import generate_study
from tests import cli_fork
from tests.e2e.test_console import (  # noqa: F401 (browser: the fixture, used by name)
    VIEWPORT,
    _config,
    _jobs,
    _shot,
    browser,
)
from tests.peers import free_port, storescu, wait_until
from tests.service import Radbridge

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow(seconds=65)]

PASSWORDS = {"lin": "lin-password-1", "bo": "bo-password-1"}
#: English labels of the pages checked; none may remain for a zh_CN user.
ENGLISH = {
    "dashboard": [
        "Dashboard",
        "Studies",
        "Jobs",
        "Dead jobs",
        "Vendors",
        "Log out",
        "last success",
        "studies today",
        "Overdue jobs",
        "Times in",
    ],
    "jobs": ["Jobs", "State", "Vendor", "attempts", "updated", "last error", "Retry", "Show"],
    "study": [
        "Series",
        "Timeline",
        "Where it went",
        "What came back",
        "Patient ID",
        "Study Instance UID",
        "explain routing",
        "Received",
        "No result yet.",
    ],
}
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+08:00")


def _login(context: Any, base: str, name: str) -> Any:
    page = context.new_page()
    page.goto(f"{base}/console/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("form.stack button[type=submit]")
    page.wait_for_url(f"{base}/console/")
    return page


def _no_english(page: Any, labels: list[str]) -> None:
    text = page.locator("body").inner_text()
    left = [label for label in labels if re.search(rf"(?<![A-Za-z]){re.escape(label)}", text)]
    assert not left, f"English left on {page.url}: {left}"


def test_a_zh_cn_user_sees_the_console_and_the_cli_in_chinese_with_site_times(
    radbridge_factory: Callable[..., Radbridge],
    browser: Any,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """zh_CN user: Chinese pages with +08:00 times; Accept-Language zh-CN: Chinese login;
    a user switches language on the page; the CLI's headers in Chinese with the offset."""
    vendor_port, http_port = free_port(), free_port()
    config = _config(tmp_path / "rb", vendor_port, http_port)
    config["site"] = {"name": "上海测试医院", "timezone": "Asia/Shanghai"}
    config["vendors"]["lungai"]["retries"] = 1
    config["vendors"]["bleedai"] = {
        "product": "CT head bleed",
        "transport": {
            "type": "dicom",
            "ae_title": "BLEEDAI",
            "host": "127.0.0.1",
            "port": free_port(),
        },
        "retries": 5,
    }
    config["routes"][0]["send"] = ["lungai", "bleedai"]
    # bleedai's failed job waits for its next attempt all through the test, however slow
    config["delivery"] = {"backoff_base_seconds": 600, "backoff_cap_seconds": 1200}
    rb = radbridge_factory(config=config)
    for name, password in PASSWORDS.items():
        rb.add_user(name, "operator", password)
    rb.cli("users", "language", "lin", "zh_CN")
    files = generate_study("ct_chest", tmp_path / "ct", instances=2, rows=32, columns=32)
    storescu(files, rb.port)
    wait_until(lambda: {j["state"] for j in _jobs(rb)} == {"dead", "failed"})
    [job] = [j for j in _jobs(rb) if j["vendor"] == "lungai"]
    base = f"http://127.0.0.1:{http_port}"

    # The login page follows Accept-Language (Playwright's locale sends zh-CN).
    chinese = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    login = chinese.new_page()
    login.goto(f"{base}/console/login")
    assert login.locator("h1").inner_text() == "登录运维控制台"
    assert login.locator("html").get_attribute("lang") == "zh-CN"
    _no_english(login, ["Log in", "Username", "Password", "API token"])

    # The zh_CN user: dashboard, jobs, one study.
    page = _login(chinese, base, "lin")
    assert page.locator("nav a").first.inner_text() == "仪表盘"
    assert "失败终止的任务" in page.locator("#dead").inner_text()
    assert LOCAL_TIME.search(page.locator(f"#job-{job['id']} td.time").inner_text())
    _no_english(page, ENGLISH["dashboard"])
    for vendor in ("lungai", "bleedai"):  # both down: the row in red
        row = page.locator(f"tr.vendor[data-vendor={vendor}]")
        assert row.get_attribute("data-health") == "down"
        assert row.locator(".badge").inner_text() == "故障"
        color = row.locator("td").first.evaluate("cell => getComputedStyle(cell).color")
        assert color == "rgb(179, 38, 30)", color  # --red
    retry = page.locator("tr.vendor[data-vendor=bleedai] td.next-retry").inner_text()
    assert LOCAL_TIME.fullmatch(retry), retry  # the failed job's next attempt, site time
    _shot(page, "zh-dashboard")

    # The dashboard refreshes itself: a study sent now shows up without a reload.
    page.evaluate("window.radbridgeKept = true")
    before = page.locator("table.jobs tr.job").count()
    second = generate_study("ct_chest", tmp_path / "ct2", instances=1, rows=32, columns=32)
    storescu(second, rb.port)
    wait_until(lambda: page.locator("table.jobs tr.job").count() > before, timeout=20)
    assert page.evaluate("window.radbridgeKept") is True  # the same page: no reload
    page.goto(f"{base}/console/jobs")
    assert page.locator("h1").inner_text() == "任务"
    assert page.locator(f"#job-{job['id']} [data-state=dead]").inner_text() == "已终止"
    assert page.locator(f"#job-{job['id']} button[data-action=retry]").inner_text() == "重试"
    _no_english(page, ENGLISH["jobs"])
    page.goto(f"{base}/console/studies/{job['study_uid']}")
    _shot(page, "zh-study")
    assert page.locator("h2", has_text="序列").count() == 1
    assert page.locator("h4", has_text="时间线").count() == 2  # one per job
    assert "+08:00" in page.locator("dl.facts").first.inner_text()
    _no_english(page, ENGLISH["study"])

    # An English user (browser in English) switches to Chinese on the page itself.
    english = browser.new_context(viewport=VIEWPORT, locale="en-US")
    other = _login(english, base, "bo")
    assert other.locator("nav a").first.inner_text() == "Dashboard"
    other.select_option("#language select", "zh_CN")
    other.click("#language button")
    other.wait_for_url(f"{base}/console/")
    assert other.locator("nav a").first.inner_text() == "仪表盘"

    # The CLI: RADBRIDGE_LANG picks Chinese headers; times carry the site's offset.
    env = {**rb.env, "RADBRIDGE_LANG": "zh_CN"}
    listed = cli_fork.run(["jobs", "list", "-c", str(rb.config_path)], env=env, check=True)
    header = listed.stdout.splitlines()[1]
    for label in ("编号", "状态", "厂商", "路由", "更新时间"):
        assert label in header, listed.stdout
    assert "updated" not in listed.stdout
    assert LOCAL_TIME.search(listed.stdout), listed.stdout
    english_cli = cli_fork.run(
        ["jobs", "list", "-c", str(rb.config_path)], env={**rb.env, "LANG": "C.UTF-8"}, check=True
    )
    assert "updated" in english_cli.stdout and "+08:00" in english_cli.stdout
