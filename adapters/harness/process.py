"""Ports and child processes for the harness: free loopback ports, waiting, stopping by PID.

Debian's dcmtk and Orthanc leave Nagle on; every process started here gets
``TCP_NODELAY=1`` in its environment (without it each C-STORE on loopback
stalls about 40 ms).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30.0, host: str = LOOPBACK) -> None:
    """Return once a TCP connection to ``host:port`` succeeds; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def nodelay_env() -> dict[str, str]:
    """A copy of this process's environment with ``TCP_NODELAY=1`` (for dcmtk and Orthanc)."""
    return {**os.environ, "TCP_NODELAY": "1"}


class ManagedProcess:
    """A child process in its own process group, stopped by its PID (and that group).

    Subclasses set ``log_path`` and call ``_start``; ``stop`` sends SIGTERM, then
    SIGKILL, to the group the process leads, so forked children go with it.
    """

    process: subprocess.Popen[bytes] | None = None
    log_path: Path

    def _start(
        self, args: list[str], cwd: Path | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**nodelay_env(), **(extra_env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            log.close()

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.process.args!r} exited with {self.process.returncode}:\n{self.log()}"
            )

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; also the children it forked (its group)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):  # children of a storescp --fork
            os.killpg(process.pid, signal.SIGKILL)


def radbridge_command() -> str:
    """The ``radbridge`` executable next to this Python (a venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "radbridge"
    if beside.exists():
        return str(beside)
    return shutil.which("radbridge") or "radbridge"


class RadbridgeServe(ManagedProcess):
    """``radbridge serve -c CONFIG`` as a child process: started, stopped, or killed with -9.

    Its output (JSON log lines) goes to ``log_path``, appended across
    restarts; :meth:`start` returns once *this* run logged ``radbridge
    started``. ``env`` adds variables (results tokens…) to the environment.
    """

    STARTED = b"radbridge started"

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.env = env or {}

    def start(self, timeout: float = 60.0) -> RadbridgeServe:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._start([radbridge_command(), "serve", "-c", str(self.config_path)], extra_env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with self.log_path.open("rb") as log:
                log.seek(offset)
                if self.STARTED in log.read():
                    return self
            time.sleep(0.05)
        self.kill9()
        raise TimeoutError(f"radbridge did not start in {timeout:g} s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to radbridge itself (its clean shutdown stops its listeners), then its group."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        super().stop(timeout)

    def kill9(self) -> None:
        """``kill -9`` radbridge and every process it started (its process group)."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines radbridge printed."""
        return "\n".join(self.log().splitlines()[-lines:])
