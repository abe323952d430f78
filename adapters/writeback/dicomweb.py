"""``dicomweb`` target: STOW-RS a result's objects to the PACS with the vendor STOW sender.

The spooled Part 10 files are streamed as they are by
:class:`adapters.vendors.dicomweb.DicomWebTransport` (status handling, failed
and referenced SOP sequences, retryable reasons). Same SOP Instance UIDs on
every retry: STOW-RS stores are idempotent per instance.

Settings (``targets.NAME``): ``url`` (the DICOMweb root); optional
``timeout``, ``batch_bytes``, ``retries``; ``render``, ``originals`` and
``language`` as for ``dicom`` (:mod:`adapters.writeback.rendering`); the token
only from ``RADBRIDGE_TARGETS__NAME__TOKEN``.
"""

from __future__ import annotations

from typing import Literal

from adapters.http_status import url_endpoint
from adapters.results.render.settings import DicomRenderSettings
from adapters.vendors.base import VendorUnavailableError
from adapters.vendors.dicomweb import DicomWebTransport, StowPeer
from adapters.writeback.base import TargetUnavailableError, job_of
from adapters.writeback.correction import correction_to_store
from adapters.writeback.rendering import objects_to_store
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import WritebackItem


class DicomWebTargetSettings(StowPeer, DicomRenderSettings, TargetSettings):
    """``targets.NAME`` for ``type: dicomweb``."""

    type: Literal["dicomweb"] = "dicomweb"

    def build(self, name: str) -> DicomWebTarget:
        return DicomWebTarget(name, self)

    def endpoint(self) -> tuple[str, int] | None:
        return url_endpoint(self.url)


class DicomWebTarget(WritebackTarget):
    """STOW-RS to one PACS's DICOMweb root."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError, TargetUnavailableError)

    def __init__(self, name: str, settings: DicomWebTargetSettings) -> None:
        self.name = name
        self.settings = settings
        self.sender = DicomWebTransport(name, settings)

    def __repr__(self) -> str:
        return f"DicomWebTarget({self.name!r}, {self.sender.base_url})"

    def deliver(self, item: WritebackItem) -> str:
        with objects_to_store(item, self.settings) as store:
            outcome = self.sender.send(job_of(item), store.paths)
        return f"{outcome.detail}: {store.detail()}"

    def correct(self, item: WritebackItem) -> str:
        """Corrected copies (a patient change) and an IOCM Rejection Note for what the
        result delivery stored (:mod:`adapters.writeback.correction`)."""
        with correction_to_store(item, self.settings) as store:
            outcome = self.sender.send(job_of(item), store.paths)
        return f"{outcome.detail}: {store.detail()}"
