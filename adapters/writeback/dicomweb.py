"""``dicomweb`` target: STOW-RS a result's objects to the PACS with the vendor STOW sender.

The spooled Part 10 files are streamed as they are by
:class:`adapters.vendors.dicomweb.DicomWebTransport` (status handling, failed
and referenced SOP sequences, retryable reasons). Same SOP Instance UIDs on
every retry: STOW-RS stores are idempotent per instance.

Settings (``targets.NAME``): ``url`` (the DICOMweb root); optional
``timeout``; the token only from ``RADBRIDGE_TARGETS__NAME__TOKEN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from adapters.vendors.base import VendorUnavailableError
from adapters.vendors.dicomweb import DicomWebSettings, DicomWebTransport
from adapters.writeback import register
from adapters.writeback.base import TargetUnavailableError, job_of, target_settings
from adapters.writeback.dicom import object_paths
from broker.model.writeback import WritebackItem


@register("dicomweb")
class DicomWebTarget:
    """STOW-RS to one PACS's DICOMweb root."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError, TargetUnavailableError)

    def __init__(self, name: str, settings: DicomWebSettings) -> None:
        self.name = name
        self.sender = DicomWebTransport(name, settings)

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> Self:
        """Build from ``targets.NAME``; invalid settings raise ConfigError."""
        return cls(name, target_settings(DicomWebSettings, name, params))

    def __repr__(self) -> str:
        return f"DicomWebTarget({self.name!r}, {self.sender.base_url})"

    def deliver(self, item: WritebackItem) -> str:
        outcome = self.sender.send(job_of(item), object_paths(item))
        return f"{outcome.detail}: {outcome.instances} object(s)"

    def close(self) -> None:
        """Nothing to close: one client per delivery."""
