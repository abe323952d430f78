"""The shipped example configuration is valid and the service starts on it, as `make run` does."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tests import cli_fork
from tests.peers import echoscu, free_port

ROOT = Path(__file__).resolve().parents[2]


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
