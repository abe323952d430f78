"""Run scenarios: start what they need, take their steps, check their expectations, report.

:func:`run_scenario` runs one loaded :class:`Scenario` and returns a
:class:`ScenarioReport`: one :class:`Outcome` per set-up phase, step and
expectation, each with its time. After the first failure the remaining
steps are not run (they are reported as skipped), and the failure carries
the end of radbridge's log and what the simulated vendors did. Everything
started is stopped at the end, whatever happened; the scenario's folder
(configuration, log, spool, store, vendor and PACS files) is removed when
it passed and kept when it failed, or always kept with ``keep``.
"""

from __future__ import annotations

import enum
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.harness.scenario import expect, steps
from adapters.harness.scenario.schema import Scenario, ScenarioError, load_scenario
from adapters.harness.scenario.world import World
from broker.model.errors import RadbridgeError


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a test verdict
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class Outcome:
    """One set-up phase, step or expectation of a run: what it was, how it went, how long."""

    number: int
    label: str
    status: Status
    seconds: float
    detail: str = ""
    log: str = ""
    """On failure: the end of radbridge's log and the simulated vendors' events."""


@dataclass
class ScenarioReport:
    name: str
    file: str
    description: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    folder: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.status is not Status.FAIL for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is Status.FAIL]


OnOutcome = Callable[[ScenarioReport, Outcome], None]


def _diagnostics(world: World) -> str:
    parts = [f"--- radbridge log (last lines of {world.radbridge.log_path}) ---"]
    parts.append(world.radbridge.log_tail(30) or "(empty)")
    for name, events in world.vendor_events.items():
        if events:
            parts.append(f"--- vendor {name} ---")
            parts += events[-10:]
    return "\n".join(parts)


def run_scenario(
    scenario: Scenario,
    *,
    file: str = "",
    keep: Path | None = None,
    on_outcome: OnOutcome | None = None,
) -> ScenarioReport:
    """Run one scenario (see the module docstring)."""
    if keep is not None:
        folder = keep.resolve() / scenario.name
        shutil.rmtree(folder, ignore_errors=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f"radbridge-scenario-{scenario.name}-"))
    report = ScenarioReport(scenario.name, file, scenario.description, folder=folder)
    world = World(scenario, folder)
    started = time.monotonic()
    failed = False

    def record(label: str, status: Status, seconds: float, detail: str, log: str = "") -> None:
        outcome = Outcome(len(report.outcomes) + 1, label, status, seconds, detail, log)
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(report, outcome)

    def attempt(label: str, action: Callable[[], str]) -> None:
        nonlocal failed
        if failed:
            record(label, Status.SKIP, 0.0, "not run: an earlier step failed")
            return
        if time.monotonic() - started > scenario.timeout:
            failed = True
            record(label, Status.FAIL, 0.0, f"the scenario ran past its {scenario.timeout:g} s")
            return
        t0 = time.monotonic()
        try:
            detail = action()
        except Exception as exc:  # any failure is the step's, and is reported
            failed = True
            record(label, Status.FAIL, time.monotonic() - t0, str(exc), _diagnostics(world))
            return
        record(label, Status.PASS, time.monotonic() - t0, detail)

    def start_radbridge() -> str:
        world.write_config()
        world.radbridge.start()
        return (
            f"radbridge serve (pid {world.radbridge.pid}) DICOM :{world.rb_port}, "
            f"HL7 :{world.hl7_port}, HTTP :{world.http_port}"
        )

    def make_studies() -> str:
        world.make_studies()
        return (
            ", ".join(
                f"{s.name}: {s.spec.kind} {len(s.files)} instances" for s in world.studies.values()
            )
            or "none"
        )

    try:
        attempt("set-up: studies", make_studies)
        attempt("set-up: simulators", world.start_simulators)
        attempt("set-up: radbridge", start_radbridge)
        for step in scenario.steps:
            if step.expect is not None:
                expectation = step.expect
                attempt(expect.describe(expectation), partial(expect.check, world, expectation))
            else:
                attempt(
                    step.name or steps.describe(step.action, step.argument),
                    partial(steps.STEPS[step.action], world, step.argument),
                )
        for expectation in scenario.expect:
            attempt(expect.describe(expectation), partial(expect.check, world, expectation))
    finally:
        t0 = time.monotonic()
        try:
            world.close()
        except (RadbridgeError, OSError, RuntimeError) as exc:
            record("tear-down", Status.FAIL, time.monotonic() - t0, f"stopping failed: {exc}")
        else:
            record(
                "tear-down", Status.PASS, time.monotonic() - t0, "radbridge and simulators stopped"
            )
        report.seconds = time.monotonic() - started
        if report.ok and keep is None:
            shutil.rmtree(folder, ignore_errors=True)
            report.folder = None
    return report


def run_all(
    loaded: Sequence[tuple[Path, Scenario]],
    *,
    keep: Path | None = None,
    jobs: int = 1,
    on_report: Callable[[ScenarioReport], None] | None = None,
) -> list[ScenarioReport]:
    """Run scenarios, ``jobs`` at a time (each has its own ports and folder); the reports in
    the order given. ``on_report`` is called (in this thread) as each one ends."""
    reports: dict[int, ScenarioReport] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="scenario") as pool:
        futures = {
            pool.submit(run_scenario, scenario, file=str(path), keep=keep): n
            for n, (path, scenario) in enumerate(loaded)
        }
        for future in as_completed(futures):
            report = future.result()
            reports[futures[future]] = report
            if on_report is not None:
                on_report(report)
    return [reports[n] for n in sorted(reports)]


def load_all(paths: Sequence[Path]) -> tuple[list[tuple[Path, Scenario]], list[str]]:
    """Every scenario file loaded, and every problem of those that are not valid."""
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.append((path, load_scenario(path)))
        except ScenarioError as exc:
            problems += exc.problems
    return loaded, problems


# -------------------------------------------------------------------- output

_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.SKIP: "yellow"}


def table(report: ScenarioReport) -> Table:
    """The run of one scenario as a table: number, step, result, seconds, detail."""
    verdict = "[green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    title = f"{verdict} {report.name} ({report.seconds:.1f} s)"
    if report.description:
        title += f" — {report.description}"
    grid = Table(title=title, title_justify="left", expand=False, show_lines=False)
    grid.add_column("#", justify="right", style="dim")
    grid.add_column("step / expectation", overflow="fold")
    grid.add_column("result")
    grid.add_column("s", justify="right")
    grid.add_column("detail", overflow="fold")
    for o in report.outcomes:
        grid.add_row(
            str(o.number),
            Text(o.label),
            Text(o.status.value.upper(), style=_STYLE[o.status]),
            f"{o.seconds:.2f}",
            Text(o.detail),
        )
    return grid


def print_report(console: Console, report: ScenarioReport) -> None:
    console.print(table(report))
    for failure in report.failures:
        if failure.log:
            console.print(Text(f"#{failure.number} {failure.label}:", style="bold red"))
            console.print(Text(failure.log, style="dim"))
    if report.folder is not None:
        console.print(f"files kept in {report.folder}", highlight=False)


def summary(reports: Sequence[ScenarioReport], seconds: float) -> str:
    passed = sum(1 for r in reports if r.ok)
    failed = [r.name for r in reports if not r.ok]
    text = f"{len(reports)} scenario(s): {passed} passed, {len(failed)} failed in {seconds:.1f} s"
    return text + (f" ({', '.join(failed)})" if failed else "")
