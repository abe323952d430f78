"""The harness's free ports: outside the kernel's ephemeral range and never handed to two
processes at once (parallel scenarios and test workers start servers seconds after choosing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapters.harness.process import free_port


def _ephemeral_floor() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_held_by_one_process_are_not_handed_out_by_another() -> None:
    """Ports this process holds are never chosen by a second process, and none of either
    process's ports lies in the range outgoing connections draw their local ports from."""
    mine = {free_port() for _ in range(300)}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from adapters.harness.process import free_port\n"
            "print(' '.join(str(free_port()) for _ in range(300)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    theirs = {int(p) for p in child.stdout.split()}
    assert len(mine) == 300 and len(theirs) == 300
    assert not mine & theirs
    assert max(mine | theirs) < _ephemeral_floor()
