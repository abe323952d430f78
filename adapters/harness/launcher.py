"""Start ``radbridge`` processes without paying the command's imports each time.

Each ``radbridge`` process spends one to three seconds of CPU importing the
command and the service before it does anything. A scenario run starts a
``radbridge serve`` per scenario and asks ``routes explain`` while it waits;
a test harness runs hundreds of commands. Here one launcher process imports
``broker.cli.main``, the service and every installed adapter once, and each
invocation is a fresh child *forked* from it: its own process, arguments,
environment, working folder, standard streams and exit code, running the same
``app()`` as the installed ``radbridge`` script, with nothing shared between
invocations (each opens its own store).

``run(args, env=..., cwd=..., timeout=...)`` answers a
:class:`subprocess.CompletedProcess` like ``subprocess.run`` with
``capture_output=True, text=True``; ``start`` forks long-running commands
(``serve``, ``worker``) in a session of their own, handled like a ``Popen``.
The installed script runs instead when the launcher cannot start (the command
does not import), for the bare command or an option alone, or with
``RADBRIDGE_LAUNCH=subprocess`` in the environment.

A launcher is a process of its own, started by the first invocation and ended
with this process (it then kills what it started that still runs). A fork cannot
change what the interpreter read at its start (``PYTHONPATH``, where a plugin
folder may be): each set of ``PYTHON*`` variables asked for has a launcher of its
own.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol


def radbridge_command() -> str:
    """The ``radbridge`` executable next to this Python (a venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "radbridge"
    if beside.exists():
        return str(beside)
    return shutil.which("radbridge") or "radbridge"


RADBRIDGE = radbridge_command()


class Child(Protocol):
    """A started process as :class:`subprocess.Popen` shows one (a :class:`Forked` too)."""

    pid: int
    args: Any
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


# The launcher: import the command once, then per request fork a child that runs it.
_HELPER = r"""
import json, logging, os, signal, sys, threading, time, traceback
reply_fd = int(sys.argv[1])
sys.argv = ["radbridge"]  # as the bare command: every sub-command added by entry point loads
from broker.cli.main import app
import importlib
from importlib.metadata import entry_points
import broker.runtime.service, broker.runtime.worker  # what `serve` and `worker` import
for group in ("transports", "targets", "edges", "registries"):
    for point in entry_points(group="radbridge." + group):  # adapters serve loads by name
        importlib.import_module(point.module)

replies = os.fdopen(reply_fd, "w", buffering=1)
lock = threading.Condition()
codes = {}       # pid -> exit code, of the invocations a request waits for
detached = {}    # pid -> the file its exit code goes to (long-running services)

def child(request):
    os.close(reply_fd)
    if request.get("detach"):
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(request.get("stdin") or os.devnull, os.O_RDONLY)
    if request.get("detach"):
        out = os.open(request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        err = os.dup(out)
    else:
        out = os.open(request["stdout"], os.O_WRONLY | os.O_TRUNC)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_TRUNC)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # not the helper's, which read the requests
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    sys.argv = ["radbridge", *request["args"]]
    code = 0
    try:
        app()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)
            continue
        code = os.waitstatus_to_exitcode(status)
        with lock:
            status_file = detached.pop(pid, None)
            if status_file is None:
                codes[pid] = code
                lock.notify_all()
        if status_file is not None:
            with open(status_file + ".tmp", "w") as f:
                f.write(str(code))
            os.replace(status_file + ".tmp", status_file)

threading.Thread(target=reap, daemon=True).start()
replies.write(json.dumps({"ready": os.getpid()}) + "\n")
for line in sys.stdin:
    request = json.loads(line)
    with lock:
        pid = os.fork()
        if pid == 0:
            child(request)
        if request.get("detach"):
            detached[pid] = request["status"]
    replies.write(json.dumps({"pid": pid}) + "\n")
    if not request.get("detach"):
        with lock:
            lock.wait_for(lambda: pid in codes)
            code = codes.pop(pid)
        replies.write(json.dumps({"code": code}) + "\n")
# The caller is gone: no service started here outlives it.
with lock:
    left = list(detached)
for pid in left:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
"""


def _interpreter_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables Python reads at its start (``PYTHONPATH`` …): a fork cannot change them."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


class _Helper:
    """The helper process; one invocation at a time (a lock serialises callers)."""

    def __init__(self, interpreter_env: dict[str, str]) -> None:
        read_fd, write_fd = os.pipe()
        this = _interpreter_env(os.environ)
        ours = {k: v for k, v in os.environ.items() if k not in this}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER, str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            text=True,
            start_new_session=True,
            env={**ours, **interpreter_env},
        )
        os.close(write_fd)
        self.replies: IO[str] = os.fdopen(read_fd, "r")
        self.lock = threading.Lock()
        first = self._reply()
        if "ready" not in first:
            raise RuntimeError(f"the radbridge command did not import: {first}")

    def _reply(self) -> dict[str, Any]:
        line = self.replies.readline()
        if not line:
            raise RuntimeError("the radbridge command helper ended")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        timeout: float | None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        with self.lock, tempfile.TemporaryDirectory(prefix="radbridge-cli-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            request = {
                "args": list(args),
                "env": dict(env),
                "cwd": cwd,
                "stdout": str(out),
                "stderr": str(err),
            }
            if stdin is not None:
                (Path(tmp) / "stdin").write_text(stdin)
                request["stdin"] = str(Path(tmp) / "stdin")
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = int(self._reply()["pid"])
            killed = threading.Event()

            def kill() -> None:
                killed.set()
                os.kill(pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill) if timeout else None
            if timer is not None:
                timer.start()
            try:
                code = int(self._reply()["code"])
            finally:
                if timer is not None:
                    timer.cancel()
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
            command = [RADBRIDGE, *args]
            if killed.is_set():
                raise subprocess.TimeoutExpired(command, timeout or 0, stdout, stderr)
            return subprocess.CompletedProcess(command, code, stdout, stderr)

    def start(self, args: Sequence[str], env: Mapping[str, str], cwd: str, log: Path) -> Forked:
        """``radbridge ARGS…`` forked in a session of its own, its output appended to ``log``."""
        status = Path(tempfile.mkdtemp(prefix="radbridge-serve-")) / "exit"
        request = {
            "args": list(args),
            "env": dict(env),
            "cwd": cwd,
            "stdout": str(log),
            "detach": True,
            "status": str(status),
        }
        with self.lock:
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = int(self._reply()["pid"])
        return Forked([RADBRIDGE, *args], pid, status)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.replies.close()


class Forked:
    """A long-running ``radbridge`` forked by the helper, handled like :class:`subprocess.Popen`
    (``pid``, ``poll``, ``wait``, ``send_signal``, ``terminate``, ``kill``, ``returncode``).

    It is the helper's child, not this process's: the helper collects its exit and writes
    the code to a file, which ``poll`` reads.
    """

    def __init__(self, args: list[str], pid: int, status: Path) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self._status = status

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
            shutil.rmtree(self._status.parent, ignore_errors=True)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        return code

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: One launcher per set of ``PYTHON*`` variables asked for (a plugin folder on
#: ``PYTHONPATH`` is another interpreter); None where one could not start.
_helpers: dict[tuple[tuple[str, str], ...], _Helper | None] = {}
_start_lock = threading.Lock()


def _get_helper(env: Mapping[str, str]) -> _Helper | None:
    if os.environ.get("RADBRIDGE_LAUNCH") == "subprocess":
        return None
    wanted = _interpreter_env(env)
    key = tuple(sorted(wanted.items()))
    with _start_lock:
        if key not in _helpers:
            try:
                helper: _Helper | None = _Helper(wanted)
            except (OSError, RuntimeError):
                helper = None
            _helpers[key] = helper
            if helper is not None:
                atexit.register(helper.close)
        return _helpers[key]


def close() -> None:
    """End the launchers (a later :func:`run` starts a new one)."""
    with _start_lock:
        for helper in _helpers.values():
            if helper is not None:
                helper.close()
                atexit.unregister(helper.close)
        _helpers.clear()


def start(
    args: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | str | None = None
) -> Forked | subprocess.Popen[bytes]:
    """Start a long-running ``radbridge ARGS…`` (``serve``, ``worker``) in a session of its
    own with its output appended to ``log``: forked from the helper, or the installed script
    where :func:`run` would run it (see the module's docstring)."""
    folder = str(cwd or os.getcwd())
    log.touch()
    helper = _get_helper(env) if args else None
    if helper is not None:
        return helper.start(args, env, folder, log)
    with log.open("ab") as out:
        return subprocess.Popen(
            [RADBRIDGE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=folder,
            start_new_session=True,
        )


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float | None = 60,
    check: bool = False,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``radbridge ARGS…`` in a forked child (or the installed script); its output and code.
    ``stdin``: the text its standard input reads (else it reads nothing)."""
    env = dict(os.environ if env is None else env)
    folder = str(cwd or os.getcwd())
    forkable = bool(args) and not args[0].startswith("-")
    helper = _get_helper(env) if forkable else None
    if helper is None:
        result = subprocess.run(
            [RADBRIDGE, *args],
            capture_output=True,
            text=True,
            input=stdin,
            env=env,
            cwd=folder,
            timeout=timeout,
            check=False,
        )
    else:
        result = helper.run(args, env, folder, timeout, stdin)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return result
