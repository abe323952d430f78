"""The shipped examples and the README's walkthroughs: the example configurations are valid and
the service starts on one as `make run` does; every example scenario is listed where the README
lists them, and every `radbridge …` command line the README shows names a command and options
that exist."""

from __future__ import annotations

import os
import re
import shutil
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import typer

from tests import cli_fork
from tests.peers import echoscu, free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SCENARIOS = sorted(p.stem for p in (ROOT / "examples" / "scenarios").glob("*.yaml"))
#: The example configurations of radbridge (the scenarios and the Prometheus files are not).
CONFIGURATIONS = sorted(
    p
    for p in (ROOT / "examples").rglob("*.yaml")
    if not p.is_relative_to(ROOT / "examples" / "scenarios")
    and not p.is_relative_to(ROOT / "examples" / "monitoring")
)


def test_hospital_example_starts_and_answers_c_echo(tmp_path: Path) -> None:
    """`radbridge serve -c examples/hospital.yaml` starts (every transport builds) and echoes."""
    folder = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", folder)
    port = free_port()
    http_port = free_port()
    env = {
        **os.environ,
        "RADBRIDGE_DICOM__LISTEN__PORT": str(port),
        "RADBRIDGE_HTTP__LISTEN__PORT": str(http_port),
        "RADBRIDGE_HTTP__PUBLIC_URL": f"http://127.0.0.1:{http_port}",
        "RADBRIDGE_HL7__LISTEN__PORT": str(free_port()),
        "TCP_NODELAY": "1",
    }
    log = tmp_path / "serve.log"
    process = cli_fork.start(["serve", "-c", str(folder / "hospital.yaml")], env=env, log=log)
    try:
        deadline_text = ""
        deadline = time.monotonic() + 120  # a bound for a failure; starting takes seconds
        while time.monotonic() < deadline:
            deadline_text = log.read_text(errors="replace")
            if "radbridge started" in deadline_text or process.poll() is not None:
                break
            time.sleep(0.1)
        assert "radbridge started" in deadline_text, deadline_text
        assert echoscu(port, calling_ae="CT01").returncode == 0
    finally:
        process.terminate()
        assert process.wait(30) == 0


def test_every_example_configuration_passes_config_check() -> None:
    """`radbridge config check FILE` says OK (exit 0) for every configuration in examples/."""
    assert CONFIGURATIONS, "no example configuration"
    for path in CONFIGURATIONS:
        done = cli_fork.run(["config", "check", str(path.relative_to(ROOT))], cwd=ROOT)
        assert done.returncode == 0, (path, done.stdout, done.stderr)
        assert done.stdout.startswith(f"OK: {path.relative_to(ROOT)}"), done.stdout


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_readme_lists_every_example_scenario() -> None:
    """The README's walkthrough (step 3 of "Five minutes") names every scenario file of
    examples/scenarios/, and the Scenarios table has a row for each; none that is not there."""
    text = README.read_text(encoding="utf-8")
    walkthrough = _section(text, "## Five minutes: the whole loop")
    table = _section(text, "### Scenarios")
    rows = set(re.findall(r"^\| `([\w.-]+)` \|", table, flags=re.MULTILINE))
    named = {
        name for name in SCENARIOS if re.search(rf"[`/]{re.escape(name)}(\.yaml)?`", walkthrough)
    }
    assert named == set(SCENARIOS), f"not in the walkthrough: {set(SCENARIOS) - named}"
    scenario_rows = {row for row in rows if not row.startswith(("send_", "expect", "wait"))}
    assert set(SCENARIOS) <= scenario_rows, f"no row: {set(SCENARIOS) - scenario_rows}"
    shown = {row for row in scenario_rows if re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", row)}
    assert shown <= set(SCENARIOS), f"rows without a file: {shown - set(SCENARIOS)}"


def _commands() -> Any:
    """The ``radbridge`` command tree (click), with the plugin commands (``harness``) loaded."""
    from broker.cli.main import app  # noqa: PLC0415 (the CLI, imported only here)

    root = typer.main.get_command(app)
    for plugin in entry_points(group="radbridge.commands"):
        root.commands[plugin.name] = typer.main.get_command(plugin.load())  # type: ignore[attr-defined]
    return root


#: ``radbridge WORDS…`` in the README: in a code block or in backticks, up to the end of the
#: command (a comment, a pipe, a closing backtick or parenthesis, the line's end).
COMMAND_LINE = re.compile(r"(?:^|[\s`(])(?:\S*/)?radbridge ([a-z][\w-]*(?: [^`\n#|)]*)?)")


def test_readme_command_lines_name_commands_and_options_that_exist() -> None:
    """Every `radbridge …` command line the README shows (its walkthroughs and how-tos) names
    a sub-command `radbridge --help` lists and only options that sub-command's `--help` has."""
    text = re.sub(r"\\\n\s*", " ", README.read_text(encoding="utf-8"))  # continued lines
    root = _commands()
    problems: list[str] = []
    checked = 0
    for match in COMMAND_LINE.finditer(text):
        line = text[: match.start()].count("\n") + 1
        words = match.group(1).split()
        command, path = root, []
        while words and hasattr(command, "commands") and words[0] in command.commands:
            command = command.commands[words[0]]
            path.append(words.pop(0))
        if not path:
            continue  # prose: "radbridge is …"
        checked += 1
        if hasattr(command, "commands"):
            if words and re.fullmatch(r"[a-z][a-z-]+", words[0]):
                problems.append(
                    f"README line {line}: no command 'radbridge {' '.join(path)} {words[0]}'"
                )
            continue
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in words:
            name = word.strip("[]`,;.(").split("=")[0].split("|")[0].rstrip("]…")
            if name.startswith("--") and name not in options:
                problems.append(f"README line {line}: 'radbridge {' '.join(path)}' has no {name}")
    assert checked > 100, checked  # the README shows that many; a broken pattern finds none
    assert not problems, "\n".join(problems)
