"""Scenarios: every example in examples/scenarios/ passes through `radbridge harness run`, with
JUnit XML; a false expectation fails the run and is named; a malformed file gets FILE:LINE."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydicom import dcmread

from adapters.dicom.synthetic import generate_study
from adapters.harness.process import nodelay_env
from adapters.harness.products import Presence, ProductKind, make_sr
from adapters.harness.scenario import ScenarioError, Status, load_scenario
from adapters.harness.scenario.junit import junit_xml
from adapters.harness.scenario.runner import Outcome, ScenarioReport
from adapters.results.sr import SourceStudy
from adapters.results.sr_read import findings_from_sr
from tests import cli_fork

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.yaml"))
#: The flows and failure modes of issue 6 that the examples must cover.
REQUIRED = {
    "order-then-study",
    "study-then-order",
    "fan-out",
    "no-route",
    "json-results-sr",
    "vendor-down-then-up",
    "pacs-down",
    "ris-answers-ae",
    "kill-9-mid-delivery",
    "urgent-head-bleed",
}


def _harness_run(
    *args: str, timeout: float = 600, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return cli_fork.run(
        ["harness", "run", *args],
        env={**nodelay_env(), "COLUMNS": "200"},
        timeout=timeout,
        cwd=cwd,
    )


def test_example_scenarios_cover_every_flow_and_failure_mode() -> None:
    """Every example file is a valid scenario, and together they cover issue 6's list."""
    names = {load_scenario(path).name for path in SCENARIOS}
    assert names >= REQUIRED, f"missing: {REQUIRED - names}"
    assert {path.stem for path in SCENARIOS} == names  # a file is named after its scenario


@pytest.mark.slow(seconds=35)
@pytest.mark.timeout(900)
def test_every_example_scenario_passes_and_junit_says_so(tmp_path: Path) -> None:
    """`radbridge harness run examples/scenarios/*.yaml --junit FILE` exits 0, prints a table
    per scenario, and writes one passing testsuite per scenario with one testcase per step."""
    junit = tmp_path / "out.xml"
    run = _harness_run(*map(str, SCENARIOS), "--junit", str(junit), "--jobs", "3")
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert f"{len(SCENARIOS)} scenario(s): {len(SCENARIOS)} passed, 0 failed" in run.stdout
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("failures"), root.get("errors")) == ("0", "0")
    suites = root.findall("testsuite")
    assert {s.get("name") for s in suites} == {load_scenario(p).name for p in SCENARIOS}
    for suite in suites:
        cases = suite.findall("testcase")
        assert len(cases) == int(suite.get("tests") or 0) >= 5
        assert all(float(c.get("time") or -1) >= 0 for c in cases)
        assert not suite.findall("testcase/failure")


FALSE = """\
name: false-expectation
radbridge:
  routes: []
studies:
  x1: {kind: ct_head, accession: ACCF1, instances: 2}
steps:
  - send_study: x1
  - expect: {jobs: {study: x1, count: 1}, within: 3s}
  - wait: 1s
"""


@pytest.mark.timeout(300)
def test_a_false_expectation_fails_the_run_and_is_named(tmp_path: Path) -> None:
    """A scenario whose expectation does not hold exits 1; the table and the JUnit failure name
    that expectation and what was seen; the steps after it are skipped, not run. ``--keep``
    is relative to the working directory, as in the README's walkthrough."""
    path = tmp_path / "false-expectation.yaml"
    path.write_text(FALSE)
    junit = tmp_path / "out.xml"
    run = _harness_run(str(path), "--junit", str(junit), "--keep", "kept", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAIL" in run.stdout
    assert "expect x1 has 1 job(s) within 3 s" in run.stdout
    assert "x1 is stable with 0 job(s)" in run.stdout
    [failed] = ET.parse(junit).getroot().findall(".//testcase[failure]")
    assert failed.get("name") == "05 expect x1 has 1 job(s) within 3 s"
    failure = failed.find("failure")
    assert failure is not None
    assert "radbridge log" in (failure.text or "")
    skipped = ET.parse(junit).getroot().findall(".//testcase[skipped]")
    assert [c.get("name") for c in skipped] == ["06 wait 1 s"]
    assert (tmp_path / "kept" / "false-expectation" / "radbridge.log").stat().st_size > 0


MALFORMED = """\
name: malformed
radbridge:
  routes:
    - name: r1
      when: {modality: CT}
      send: [nosuchvendor]
      priorty: stat
studies:
  s1: {kind: ct_chest, accession: A1}
steps:
  - send_study: s2
  - teleport: true
  - expect: {job: {study: s1, vendor: v, state: done}, within: soon}
"""


def test_a_malformed_scenario_gets_file_line_problems(tmp_path: Path) -> None:
    """Every problem of a bad scenario is reported at its FILE:LINE, the radbridge fragment's
    too (checked against radbridge's settings schema), and nothing is run (exit code 2)."""
    path = tmp_path / "malformed.yaml"
    path.write_text(MALFORMED)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = "\n".join(caught.value.problems)
    assert f"{path}:12: steps.1.teleport: unknown field 'teleport'; valid: one of send_order" in (
        problems
    )
    assert f"{path}:13: steps.2.expect.within: not a duration: 'soon'" in problems
    run = _harness_run(str(path))
    assert run.returncode == 2
    assert run.stdout == ""
    assert f"{path}:13: steps.2.expect.within" in run.stderr
    fixed = MALFORMED.replace("  - teleport: true\n", "").replace("soon", "5s")
    path.write_text(fixed)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = "\n".join(caught.value.problems)
    assert f"{path}:11: steps.0.send_study.study: unknown study 's2'; known studies: s1" in (
        problems
    )
    path.write_text(fixed.replace("s2", "s1"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = "\n".join(caught.value.problems)
    assert f"{path}:6: radbridge.routes.0.send.0: unknown vendor 'nosuchvendor'" in problems
    assert f"{path}:7: radbridge.routes.0.priorty: unknown field 'priorty'" in problems


def test_junit_xml_has_a_suite_per_scenario_and_a_case_per_step() -> None:
    """The JUnit XML CI systems read: totals on <testsuites>, <failure> with the log, <skipped>."""
    report = ScenarioReport(
        "s",
        "s.yaml",
        "a scenario",
        [
            Outcome(1, "send_study x", Status.PASS, 0.5, "6 instances"),
            Outcome(2, "expect job x -> v done within 5 s", Status.FAIL, 5.0, "it is dead", "log"),
            Outcome(3, "wait 1 s", Status.SKIP, 0.0, "not run: an earlier step failed"),
        ],
        6.0,
    )
    root = junit_xml([report]).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    [suite] = root.findall("testsuite")
    assert suite.get("name") == "s"
    names = [c.get("name") for c in suite.findall("testcase")]
    assert names == ["01 send_study x", "02 expect job x -> v done within 5 s", "03 wait 1 s"]
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert failure.get("message") == "it is dead"
    assert failure.text == "it is dead\n\nlog"


DISAGREEING = """\
name: disagreeing
simulators:
  vendors:
    lungthree: {product: lung-nodule-ct, findings: {"SCT:36118008": absent}}
studies:
  s1: {kind: ct_chest, accession: A1}
expect:
  - {study_flags: {study: s1, flags: [discordnt]}}
  - {webhook_receives: {study: s1, event: discordant}}
"""


def test_a_disagreeing_vendor_says_absent_in_its_sr_and_bad_uses_are_located(
    tmp_path: Path,
) -> None:
    """``findings: {CODE: absent}`` makes the simulated product's SR say the nodules are
    absent (read back by radbridge's own SR reader), the other codes untouched; a code the
    product does not report, an unknown flag and a webhook expectation without a webhook
    are problems at their lines."""
    files = generate_study("ct_chest", tmp_path / "study", instances=4, rows=32, columns=32)
    source = SourceStudy.from_datasets([dcmread(f, stop_before_pixels=True) for f in files])
    told = {"SCT:786838002": Presence.ABSENT}
    sr = make_sr(ProductKind.LUNG_NODULE_CT, source, result_id="r1", overrides=told)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    found = findings_from_sr(dcmread(tmp_path / "sr.dcm"))
    assert found is not None
    assert [(f.code.value, f.present) for f in found.findings] == [("786838002", False)]
    plain = make_sr(ProductKind.LUNG_NODULE_CT, source, result_id="r2")
    plain.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    again = findings_from_sr(dcmread(tmp_path / "plain.dcm"))
    assert again is not None and [f.present for f in again.findings] == [True, True]
    path = tmp_path / "disagreeing.yaml"
    path.write_text(DISAGREEING)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    problems = "\n".join(caught.value.problems)
    assert f"{path}:4: simulators.vendors.lungthree.findings.SCT:36118008: lung-nodule-ct " in (
        problems
    )
    assert "valid: SCT:786838002" in problems
    assert f"{path}:8: expect.0.study_flags.flags.0: Input should be 'discordant'" in problems
    path.write_text(DISAGREEING.replace("36118008", "786838002").replace("discordnt", "discordant"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:9: expect.1.webhook_receives: there is no webhook")
