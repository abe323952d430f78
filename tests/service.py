"""Run radbridge as a real process for tests: start, wait until it answers, stop or kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import yaml

from adapters.harness.process import free_port
from tests import cli_fork

ROOT = Path(__file__).resolve().parent.parent
RADBRIDGE = str(Path(sys.executable).parent / "radbridge")


def base_config(folder: Path, port: int, **dicom: Any) -> dict[str, Any]:
    """A configuration on loopback with its own spool and SQLite store in ``folder``.

    One DICOM listener process (``dicom.processes: 1``) unless ``dicom`` says
    otherwise: each one more is another Python to spawn and import per
    service, and only the tests of the listener's processes need several
    (they ask for them).
    """
    return {
        "storage": {"spool": str(folder / "spool"), "database": f"sqlite:///{folder}/radbridge.db"},
        "dicom": {
            "listen": {"host": "127.0.0.1", "port": port},
            "ae_titles": {"RADBRIDGE": "ingest", "RADBRIDGE_RES": "results"},
            "allow_any_peer": True,
            "study_stable_seconds": 1.5,
            "processes": 1,
            **dicom,
        },
        "logging": {"level": "INFO", "format": "json"},
    }


def arriving(spool: Path) -> list[Path]:
    """The files in the spool's ``tmp`` (objects arriving, or left half-received), whichever
    association's folder they are in."""
    return [p for p in (spool / "tmp").rglob("*") if p.is_file()]


def dicom_block(ae_title: str, port: int, **extra: Any) -> dict[str, Any]:
    """A ``{type: dicom, …}`` block (a vendor's transport, a write-back target) for a DICOM
    peer on loopback."""
    return {"type": "dicom", "ae_title": ae_title, "host": "127.0.0.1", "port": port, **extra}


class Radbridge:
    """One ``radbridge serve`` process with its own folder, port and configuration."""

    def __init__(self, folder: Path, config: dict[str, Any] | None = None, **dicom: Any) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = config or base_config(folder, self.port, **dicom)
        self.port = int(self.config["dicom"]["listen"]["port"])
        self.config_path = folder / "radbridge.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = folder / "radbridge.log"
        self.process: subprocess.Popen[bytes] | cli_fork.Forked | None = None
        self.env = {**os.environ, "TCP_NODELAY": "1"}
        self.wrapper: list[str] = []
        """A command that runs ``radbridge serve`` (``strace …``); none by default."""

    @property
    def spool(self) -> Path:
        return Path(self.config["storage"]["spool"])

    def start(self, timeout: float = 120.0) -> Radbridge:
        """Start ``radbridge serve``; return once this run (not an earlier one) logged its start.

        The timeout only bounds a failure: a start takes a few seconds, but a
        loaded machine running tests side by side can stretch it a lot.
        """
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        serve = ["serve", "-c", str(self.config_path)]
        if self.wrapper:
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [*self.wrapper, RADBRIDGE, *serve],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
        else:  # forked from the pre-imported command (tests.cli_fork): its own process
            self.process = cli_fork.start(serve, env=self.env, log=self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"radbridge exited at start:\n{self.log_path.read_text()}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                if b"radbridge started" in f.read():
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"radbridge did not start in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.process = None
        return code

    def kill9(self) -> None:
        """kill -9 the service and every listener process it started (its process group)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill9()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``radbridge ARGS… -c CONFIG`` as its own process (forked: see :mod:`tests.cli_fork`)."""
        return cli_fork.run([*args, "-c", str(self.config_path)], env=self.env, check=check)

    def add_user(self, name: str, role: str, password: str) -> None:
        """``radbridge users add NAME --role ROLE --password-stdin`` (forked, as :meth:`cli`)."""
        command = ["users", "add", name, "--role", role, "--password-stdin"]
        cli_fork.run(
            [*command, "-c", str(self.config_path)],
            env=self.env,
            stdin=password + "\n",
            timeout=180,  # a CLI start on a loaded machine
            check=True,
        )

    def studies(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.cli("studies", "list", "--json").stdout)
        return result

    def study(self, study_uid: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("studies", "show", study_uid, "--json").stdout)
        return result

    def wait_state(self, study_uid: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        """The study as ``studies show`` gives it, once it is in ``state``.

        On a SQLite store the waiting reads the study's state from the file
        (read-only, a millisecond) and asks the command only once it matches.
        """
        deadline = time.monotonic() + timeout
        study: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.stored_state(study_uid) in (state, None):
                study = self.study(study_uid)
                if study["state"] == state:
                    return study
            time.sleep(0.1)
        raise AssertionError(f"study never became {state}: {study or self.study(study_uid)}")

    def stored_state(self, study_uid: str) -> str | None:
        """The study's state read straight from a SQLite store; None when that cannot be read."""
        database = str(self.config["storage"]["database"])
        if not database.startswith("sqlite:///"):
            return None
        path = Path(database.removeprefix("sqlite:///"))
        try:
            with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
                row = conn.execute(
                    "SELECT state FROM studies WHERE study_uid = ?", (study_uid,)
                ).fetchone()
        except sqlite3.Error:
            return None
        return str(row[0]) if row else ""

    def listener_processes(self) -> list[psutil.Process]:
        """The DICOM listener processes: every process the service started but
        multiprocessing's resource tracker (forked at start, spawned when replaced)."""
        assert self.process is not None
        return [
            p
            for p in psutil.Process(self.process.pid).children()
            if "resource_tracker" not in " ".join(p.cmdline())
        ]

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines
