"""The console script stays a small door: a process the service spawns runs it again as its
main module, and must not pay for the whole command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RADBRIDGE = Path(sys.executable).parent / "radbridge"


def test_spawned_processes_do_not_import_the_command_line() -> None:
    """Running the installed ``radbridge`` script as ``__mp_main__`` (what multiprocessing's
    spawn does in each DICOM listener process) imports neither typer nor broker.cli.main."""
    probe = (
        "import runpy, sys;"
        f"runpy.run_path({str(RADBRIDGE)!r}, run_name='__mp_main__');"
        "print(sorted(m for m in ('typer', 'rich', 'broker.cli.main') if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_the_script_still_runs_the_command_line() -> None:
    """``radbridge --help`` still reaches the full command line through the door."""
    run = subprocess.run(
        [str(RADBRIDGE), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "serve" in run.stdout and "harness" in run.stdout
