"""The harness's simulators as pytest fixtures (``pytest_plugins = ["adapters.harness.fixtures"]``).

- ``modality_sender``: ``send(kind_or_folder, port, **options) -> SendReport``;
  a kind is generated small (64x64) into the test's folder.
- ``simulated_vendor``: a factory of started :class:`SimulatedVendor`, all
  stopped at the end.
- ``ris_listener``: a factory of started :class:`RisListener`.
- ``harness_pacs``: a started receiving PACS, Orthanc when installed, else
  :class:`BuiltinPacs`; ``.dicom_port``/``.port`` and ``.studies()`` either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.dicom.synthetic import KINDS, generate_study
from adapters.harness.modality import SendReport, dicom_files, send_files
from adapters.harness.pacs import BuiltinPacs, Orthanc, orthanc_executable
from adapters.harness.process import LOOPBACK
from adapters.harness.ris import RisListener
from adapters.harness.vendor import SimulatedVendor

Sender = Callable[..., SendReport]


@pytest.fixture
def modality_sender(tmp_path: Path) -> Sender:
    """Send a generated study kind (small matrix) or a folder to a port; the report."""
    counter = iter(range(1, 10_000))

    def send(
        what: str | Path,
        port: int,
        *,
        called_ae: str = "RADBRIDGE",
        calling_ae: str = "CT01",
        associations: int = 1,
        **study: Any,
    ) -> SendReport:
        if isinstance(what, str) and what in KINDS:
            study.setdefault("rows", 64)
            study.setdefault("columns", 64)
            folder = tmp_path / f"modality-{next(counter)}"
            files = generate_study(what, folder, **study)
        else:
            files = dicom_files(what)
        return send_files(
            files,
            host=LOOPBACK,
            port=port,
            called_ae=called_ae,
            calling_ae=calling_ae,
            associations=associations,
        )

    return send


@pytest.fixture
def simulated_vendor(tmp_path: Path) -> Iterator[Callable[..., SimulatedVendor]]:
    """Start simulated vendors (``product`` and :class:`SimulatedVendor` options)."""
    started: list[SimulatedVendor] = []

    def make(product: str = "lung-nodule-ct", **options: Any) -> SimulatedVendor:
        options.setdefault("delay", 0.1)
        vendor = SimulatedVendor(product, tmp_path / f"vendor-{len(started) + 1}", **options)
        started.append(vendor.start())
        return vendor

    yield make
    for vendor in started:
        vendor.stop()


@pytest.fixture
def ris_listener(tmp_path: Path) -> Iterator[Callable[..., RisListener]]:
    """Start simulated RIS listeners (:class:`RisListener` options)."""
    started: list[RisListener] = []

    def make(**options: Any) -> RisListener:
        options.setdefault("folder", tmp_path / f"ris-{len(started) + 1}")
        listener = RisListener(**options)
        started.append(listener.start())
        return listener

    yield make
    for listener in started:
        listener.stop()


@pytest.fixture
def harness_pacs(tmp_path: Path) -> Iterator[Orthanc | BuiltinPacs]:
    """A receiving PACS: Orthanc when installed, else the built-in storage SCP."""
    pacs: Orthanc | BuiltinPacs
    if orthanc_executable() is not None:
        pacs = Orthanc(tmp_path / "pacs", aet="PACS").start()
    else:
        pacs = BuiltinPacs(tmp_path / "pacs", ae_title="PACS").start()
    yield pacs
    pacs.stop()
