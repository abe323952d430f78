"""The fuzz targets in the suite: every seed and every input that once crashed a parser is
refused (if at all) with radbridge's own error, and a short coverage-guided run finds no crash.

``make fuzz`` runs the same targets for minutes (``FUZZ_SECONDS`` each).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from broker.model.errors import RadbridgeError
from tests.fuzz import targets

#: Seconds of coverage-guided fuzzing per target in the suite.
SUITE_SECONDS = 1


def _inputs(target: str) -> list[Path]:
    folders = (targets.CORPUS / target, targets.CRASHES / target)
    return sorted(path for folder in folders if folder.is_dir() for path in folder.iterdir())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_corpus_and_past_crashes_raise_only_radbridge_errors(target: str) -> None:
    """Each seed and each kept crash of the target runs through the parser, and nothing but a
    RadbridgeError (the parser refusing the input) leaves it."""
    inputs = _inputs(target)
    assert inputs, f"no seed corpus for {target}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in inputs:
            with contextlib.suppress(RadbridgeError):
                targets.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_a_short_fuzzing_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    """atheris fuzzes the target from its corpus for a couple of seconds in a process of its
    own (libFuzzer takes over the process) and exits 0: no unexpected exception was raised."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            target,
            "--seconds",
            str(SUITE_SECONDS),
            "--shallow",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0, run.stderr[-6000:]
    assert "Done" in run.stderr and "runs in" in run.stderr, run.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))
