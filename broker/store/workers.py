"""Who holds a claim: job-engine worker ids, and whether a holder's process is gone.

A worker id names one process: ``host/pid-namespace/pid/token``. The token is
new at every start, so a process that reuses a dead one's pid is still another
worker. :func:`holder_gone` says a claim's holder is certainly dead when it
ran on this machine, in this pid namespace, and its pid is no longer a live
process (or is this process under another token): then a restarted service
takes its claims over at once instead of waiting for their leases to expire.
A holder on another machine is judged by its lease alone.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache
from pathlib import Path


@cache
def _host() -> str:
    return socket.gethostname()[:60] or "localhost"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


_mine: set[str] = set()


def new_worker_id() -> str:
    """A new id for a worker of this process (``host/pid-namespace/pid/token``)."""
    worker = f"{_host()}/{_pid_namespace()}/{os.getpid()}/{secrets.token_hex(4)}"
    _mine.add(worker)
    return worker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) holds nothing any more
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def holder_gone(holder: str | None) -> bool:
    """True when nothing can still be working under ``holder``'s claim.

    No holder (a claim made outside the engine, or by a version without
    leases) counts as gone, as does a holder process of this machine that no
    longer runs. A holder on another machine or in another pid namespace is
    never judged here: its lease decides.
    """
    if not holder:
        return True
    parts = holder.split("/")
    if len(parts) != 4 or parts[0] != _host() or parts[1] != _pid_namespace():
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return holder not in _mine
    return not _alive(pid)
