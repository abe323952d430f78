"""JUnit XML for CI systems: one ``testsuite`` per scenario, one ``testcase`` per step.

The shape is the one Jenkins, GitLab and GitHub test reporters read:
``<testsuites>`` with ``tests``/``failures``/``skipped``/``time``; each
``testcase`` has ``classname`` (``scenarios.<name>``), ``name`` (``03 send_study
chest1``) and ``time``, and a ``<failure message=…>`` with radbridge's log
tail, or ``<skipped message=…>``.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from adapters.harness.scenario.runner import ScenarioReport, Status


def junit_xml(reports: Sequence[ScenarioReport]) -> ET.ElementTree[ET.Element[str]]:
    """The reports as a JUnit XML tree."""
    root = ET.Element("testsuites", name="radbridge scenarios")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    total_time = 0.0
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    for report in reports:
        failures = sum(1 for o in report.outcomes if o.status is Status.FAIL)
        skipped = sum(1 for o in report.outcomes if o.status is Status.SKIP)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=report.name,
            tests=str(len(report.outcomes)),
            failures=str(failures),
            errors="0",
            skipped=str(skipped),
            time=f"{report.seconds:.3f}",
            timestamp=stamp,
            hostname=socket.gethostname(),
            file=report.file,
        )
        if report.description:
            properties = ET.SubElement(suite, "properties")
            ET.SubElement(properties, "property", name="description", value=report.description)
        for o in report.outcomes:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"scenarios.{report.name}",
                name=f"{o.number:02d} {o.label}",
                time=f"{o.seconds:.3f}",
            )
            if o.status is Status.FAIL:
                failure = ET.SubElement(case, "failure", message=o.detail, type="ScenarioFailure")
                failure.text = f"{o.detail}\n\n{o.log}".strip()
            elif o.status is Status.SKIP:
                ET.SubElement(case, "skipped", message=o.detail)
            elif o.detail:
                ET.SubElement(case, "system-out").text = o.detail
        totals["tests"] += len(report.outcomes)
        totals["failures"] += failures
        totals["skipped"] += skipped
        total_time += report.seconds
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("errors", "0")
    root.set("time", f"{total_time:.3f}")
    tree: ET.ElementTree[ET.Element[str]] = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(reports: Sequence[ScenarioReport], path: Path | str) -> None:
    """Write the reports' JUnit XML to ``path`` (UTF-8, with an XML declaration)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    junit_xml(reports).write(target, encoding="utf-8", xml_declaration=True)
