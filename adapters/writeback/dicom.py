"""``dicom`` target: C-STORE a result's objects to the PACS with the vendor push sender.

The objects go byte for byte from the spool over
:class:`adapters.vendors.dicom.DicomTransport` (its presentation contexts,
transfer-syntax fallback and TCP_NODELAY included). Their SOP Instance UIDs
are the result's own, so a retry stores the same instances again, which a
PACS treats as the same objects.

Settings (``targets.NAME``): ``ae_title``, ``host``, ``port``; optional
``calling_ae`` (default RADBRIDGE), ``timeout`` (s, per connection and
response), ``max_pdu``; ``render``, ``originals`` and ``language`` for PACS
that cannot show an SR or a SEG (:mod:`adapters.writeback.rendering`).
"""

from __future__ import annotations

from typing import Literal

from adapters.results.render.settings import DicomRenderSettings
from adapters.vendors.base import VendorUnavailableError
from adapters.vendors.dicom import DicomPeer, DicomTransport
from adapters.writeback.base import TargetUnavailableError, job_of
from adapters.writeback.correction import correction_to_store
from adapters.writeback.rendering import objects_to_store
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import WritebackItem


class DicomTargetSettings(DicomPeer, DicomRenderSettings, TargetSettings):
    """``targets.NAME`` for ``type: dicom``."""

    type: Literal["dicom"] = "dicom"

    def build(self, name: str) -> DicomTarget:
        return DicomTarget(name, self)

    def endpoint(self) -> tuple[str, int] | None:
        return self.host, self.port


class DicomTarget(WritebackTarget):
    """C-STORE to one PACS AE title."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError, TargetUnavailableError)

    def __init__(self, name: str, settings: DicomTargetSettings) -> None:
        self.name = name
        self.settings = settings
        self.sender = DicomTransport(name, settings)

    def __repr__(self) -> str:
        s = self.sender.settings
        return f"DicomTarget({self.name!r}, {s.ae_title}@{s.host}:{s.port})"

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
