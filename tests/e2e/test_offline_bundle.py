"""The offline bundle of ``make dist`` installs and runs on a machine without a package index."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from importlib.metadata import requires, version
from pathlib import Path

import httpx
import pytest
import yaml

from tests.peers import LOOPBACK, free_port
from tests.service import base_config

# The module's fixtures are set up once: every test of it runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("offline-bundle")

ROOT = Path(__file__).resolve().parents[2]
VERSION = version("radbridge")


def _no_network() -> list[str]:
    """``unshare -n``: the command then runs in a network namespace of its own, with no
    interface up (root only); empty where that cannot be done."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return []
    probe = subprocess.run([unshare, "-n", "true"], check=False, capture_output=True)
    return [unshare, "-n"] if probe.returncode == 0 else []


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``deploy/dist.sh OUT`` (what ``make dist`` runs), built once per session; the
    dependency wheels come from the user's wheelhouse (~/.cache/radbridge/wheelhouse: a fresh
    clone takes the wheels an earlier build kept), or from the index when it lacks some."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        ["sh", "deploy/dist.sh", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


@pytest.mark.slow(seconds=120)  # with the session fixture that builds the bundle
@pytest.mark.timeout(900)  # a busy 2-core machine stretches the install several times
def test_offline_bundle_installs_without_index_and_serves(dist: Path, tmp_path: Path) -> None:
    """make dist gives the wheel, the sdist and the offline bundle; the bundle holds the
    runtime wheels and none of the test tools; its install.sh, with pip's index disabled,
    none of this machine's pip settings and (as root) no network at all, makes a virtual
    environment whose ``radbridge serve`` gives its version in /healthz, the console's
    footer (the templates are in the wheel) and its ``radbridge started`` log line, and which
    SIGTERM stops without a warning (no semaphore left for the resource tracker to clean up)."""
    assert sorted(p.name for p in dist.iterdir()) == sorted(
        [
            f"radbridge-{VERSION}-offline.tar.gz",
            f"radbridge-{VERSION}-py3-none-any.whl",
            f"radbridge-{VERSION}.tar.gz",
        ]
    )
    with tarfile.open(dist / f"radbridge-{VERSION}-offline.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    bundle = tmp_path / f"radbridge-{VERSION}-offline"
    assert (bundle / "examples/hospital.yaml").is_file()
    wheels = {
        re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in (bundle / "wheels").iterdir()
    }
    dev = {
        re.split(r"[<>=!~;\[ ]", r)[0].lower()
        for r in requires("radbridge") or []
        if "extra == " in r and "dev" in r
    }
    assert {"radbridge", "pynetdicom", "fastapi", "sqlalchemy", "numpy"} <= wheels
    assert dev and not (dev & wheels), dev & wheels

    prefix = tmp_path / "opt"
    leave_out = ("PIP_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(leave_out)}
    env["PIP_NO_INDEX"] = "1"
    installed = subprocess.run(
        [*_no_network(), "sh", str(bundle / "install.sh"), "--prefix", str(prefix), "--no-compile"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert f"radbridge {VERSION}" in installed.stdout
    radbridge = prefix / "venv/bin/radbridge"
    tools = subprocess.run(
        [prefix / "venv/bin/python", "-c", "import pytest"], check=False, capture_output=True
    )
    assert tools.returncode != 0  # the service's environment has no test tools

    http_port = free_port()
    config = base_config(tmp_path / "run", free_port())
    config["http"] = {"listen": {"host": LOOPBACK, "port": http_port}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run/radbridge.yaml").write_text(yaml.safe_dump(config))
    with (tmp_path / "run/radbridge.log").open("wb") as log:
        process = subprocess.Popen(
            [radbridge, "serve", "-c", str(tmp_path / "run/radbridge.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    log_path = tmp_path / "run/radbridge.log"
    try:
        deadline = time.monotonic() + 120  # bounds a failure only: a busy machine is slow
        while b'"radbridge started"' not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        health = httpx.get(f"http://{LOOPBACK}:{http_port}/healthz", timeout=10)
        assert health.json() == {"status": "ok", "version": VERSION}
        login = httpx.get(f"http://{LOOPBACK}:{http_port}/console/login", timeout=10)
        assert f"radbridge {VERSION}." in login.text.split("<footer>")[1]
        started = [
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if '"radbridge started"' in line
        ]
        assert [line["version"] for line in started] == [VERSION]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    # Stopped as systemd stops it, it leaves nothing behind: once none of the processes of
    # its session is left (the resource tracker of its listener processes ends last, and
    # warns of semaphores nobody released), its log has no warning.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    stopped = log_path.read_text()
    assert '"radbridge stopped"' in stopped
    assert "leaked semaphore" not in stopped and "Warning:" not in stopped, stopped


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--prefix", "opt/radbridge"], "--prefix must be an absolute path"),
        (["--prefx", "/opt"], "unknown argument '--prefx'; valid: --prefix DIR"),
    ],
)
def test_install_script_refuses_bad_arguments(arguments: list[str], says: str) -> None:
    """install.sh stops with exit code 2 and says what would be valid, before it touches
    anything, for a relative prefix or an unknown option."""
    answer = subprocess.run(
        ["sh", str(ROOT / "deploy/install.sh"), *arguments],
        check=False,
        capture_output=True,
        text=True,
    )
    assert answer.returncode == 2 and says in answer.stderr, answer
