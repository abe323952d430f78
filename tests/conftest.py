"""Shared fixtures: a real radbridge process, and TCP_NODELAY for dcmtk peers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.harness.fixtures import (  # noqa: F401 - the harness's simulators as fixtures
    harness_pacs,
    modality_sender,
    ris_listener,
    simulated_vendor,
)
from tests.service import Radbridge

# Debian's dcmtk (and Orthanc) leave Nagle on: each C-STORE on loopback would
# stall ~40 ms without this in the environment of both ends.
os.environ["TCP_NODELAY"] = "1"


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
