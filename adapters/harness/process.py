"""Ports and child processes for the harness: free loopback ports, waiting, stopping by PID.

Debian's dcmtk and Orthanc leave Nagle on; every process started here gets
``TCP_NODELAY=1`` in its environment (without it each C-STORE on loopback
stalls about 40 ms).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from adapters.harness import launcher
from adapters.harness.launcher import Child

LOOPBACK = "127.0.0.1"


#: How long a port handed out by :func:`free_port` stays reserved for its caller: long enough
#: for the server it is meant for to start and bind it (after that, binding shows it taken).
PORT_HOLD_SECONDS = 600.0
_PORT_FLOOR = 10000
_held: dict[int, tuple[float, int]] = {}  # port -> (when reserved, descriptor of its lock file)
_held_lock = threading.Lock()


@functools.cache
def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on, reserved for the caller for a while.

    A port taken from the kernel's ephemeral range (``bind`` to port 0) can be taken by any
    outgoing connection, or handed to another process, before the server meant for it binds
    it: a scenario starts its peers and radbridge seconds after choosing their ports. So the
    port comes from below that range, and a lock file per port (an ``flock`` held by this
    process for :data:`PORT_HOLD_SECONDS`, or until it exits) keeps every other process that
    uses this function — parallel scenarios, test workers — from handing out the same one.
    """
    floor = _ephemeral_floor()
    if floor - _PORT_FLOOR < 1000:  # an unusual kernel setting: fall back to the kernel's choice
        with socket.socket() as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
            return port
    folder = Path(tempfile.gettempdir()) / "radbridge-ports"
    folder.mkdir(exist_ok=True)
    with _held_lock:
        now = time.monotonic()
        for old, (since, fd) in list(_held.items()):
            if now - since > PORT_HOLD_SECONDS:
                os.close(fd)
                del _held[old]
        for _ in range(2000):
            port = random.randrange(_PORT_FLOOR, floor)  # noqa: S311 - not a secret
            if port in _held:
                continue
            fd = os.open(folder / str(port), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if not _bindable(host, port):
                os.close(fd)
                continue
            _held[port] = (now, fd)
            return port
    raise RuntimeError(f"no free port in {_PORT_FLOOR}-{floor - 1} on {host}")


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

    process: Child | None = None
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
        self.process = launcher.start(
            ["serve", "-c", str(self.config_path)],
            env={**nodelay_env(), **self.env},
            log=self.log_path,
        )
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
