"""Shared fixtures: a real radbridge process, and TCP_NODELAY for dcmtk peers.

Tests run on several pytest-xdist workers at once (``make test``): everything a
test starts gets a free port, its own folder (``tmp_path``), its own
PostgreSQL schema or database and its own bus prefix, and no process a test
started outlives the worker that ran it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from adapters.harness.fixtures import (  # noqa: F401 - the harness's simulators as fixtures
    harness_pacs,
    modality_sender,
    ris_listener,
    simulated_vendor,
)
from tests import cli_fork
from tests.service import Radbridge

# Debian's dcmtk (and Orthanc) leave Nagle on: each C-STORE on loopback would
# stall ~40 ms without this in the environment of both ends.
os.environ["TCP_NODELAY"] = "1"
# The bus URLs the tests configure name no password (radbridge refuses one there): it comes
# from the environment, as on a hospital's server; the local RabbitMQ is guest/guest.
os.environ.setdefault("RADBRIDGE_BUS__PASSWORD", "guest")
#: What a test marked ``slow`` without ``seconds`` takes, at least.
SLOW_SECONDS = 15.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow first, the longest first (``slow(seconds=…)``): on parallel workers
    they then overlap the many short ones instead of being what the run waits for at its
    end (pyproject.toml turns off pytest-xdist's own reordering, which put every group,
    by its number of tests, before the slowest single tests). Tests marked ``xdist_group``
    get the group in their id, which ``--dist loadgroup`` schedules by: pytest-xdist 3.8
    writes it to ``item._nodeid``, which pytest 9 no longer reads, so without this the
    tests of a group spread over the workers (each starting the module's service again)."""
    items.sort(key=_longest_first)
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None and "@" not in item.nodeid:
            group = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
            node_id = getattr(item, "_id", None)
            if node_id is not None:
                item._id = type(node_id).parse(f"{item.nodeid}@{group}")


def _longest_first(item: pytest.Item) -> float:
    """Minus the seconds a slow test (its group, for a group) takes on its own; 0 when not slow."""
    slow = item.get_closest_marker("slow")
    return 0.0 if slow is None else -float(slow.kwargs.get("seconds", SLOW_SECONDS))


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session() -> Iterator[None]:
    """At the end, stop whatever a test started and left running (say a worker whose test
    failed before stopping it), so that it neither loads the machine nor consumes a bus."""
    yield
    cli_fork.close()
    # multiprocessing's resource tracker ignores SIGTERM and ends by itself with this
    # worker; killing it would only make it relaunch and warn of leaked segments.
    left = [p for p in psutil.Process().children(recursive=True) if not _resource_tracker(p)]
    for process in left:
        with contextlib.suppress(psutil.Error):
            print(f"stopping leftover process {process.pid}: {process.cmdline()}", file=sys.stderr)
            process.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _resource_tracker(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    return False


@pytest.fixture
def radbridge_factory(tmp_path: Path) -> Iterator[Callable[..., Radbridge]]:
    """Start radbridge processes on free loopback ports; all are stopped at the end."""
    started: list[Radbridge] = []

    def make(name: str = "rb", config: dict[str, Any] | None = None, **dicom: Any) -> Radbridge:
        rb = Radbridge(tmp_path / name, config, **dicom)
        started.append(rb)
        return rb.start()

    yield make
    for rb in started:
        rb.close()


@pytest.fixture
def radbridge(radbridge_factory: Callable[..., Radbridge]) -> Radbridge:
    """One running radbridge with a 1.5 s stable time that accepts any calling AE."""
    return radbridge_factory()
