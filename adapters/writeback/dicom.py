"""``dicom`` target: C-STORE a result's objects to the PACS with the vendor push sender.

The objects go byte for byte from the spool over
:class:`adapters.vendors.dicom.DicomTransport` (its presentation contexts,
transfer-syntax fallback and TCP_NODELAY included). Their SOP Instance UIDs
are the result's own, so a retry stores the same instances again, which a
PACS treats as the same objects.

Settings (``targets.NAME``): ``ae_title``, ``host``, ``port``; optional
``calling_ae`` (default RADBRIDGE), ``timeout`` (s, per connection and
response), ``max_pdu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from adapters.vendors.base import VendorUnavailableError
from adapters.vendors.dicom import DicomPeer, DicomTransport
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError, job_of
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import WritebackItem


def object_paths(item: WritebackItem) -> list[Path]:
    """The spool files of the result's objects, or TargetRejectedError when there are none."""
    result = item.result
    if result is None or not result.objects:
        raise TargetRejectedError(
            f"result {item.delivery.result_id} has no DICOM objects to store "
            "(findings only: write them back with an hl7 or fhir target)"
        )
    return [Path(o.path) for o in result.objects]


class DicomTargetSettings(DicomPeer, TargetSettings):
    """``targets.NAME`` for ``type: dicom``."""

    type: Literal["dicom"] = "dicom"

    def build(self, name: str) -> DicomTarget:
        return DicomTarget(name, self)

    def endpoint(self) -> tuple[str, int] | None:
        return self.host, self.port


class DicomTarget(WritebackTarget):
    """C-STORE to one PACS AE title."""

    retryable: tuple[type[Exception], ...] = (VendorUnavailableError, TargetUnavailableError)

    def __init__(self, name: str, settings: DicomPeer) -> None:
        self.name = name
        self.sender = DicomTransport(name, settings)

    def __repr__(self) -> str:
        s = self.sender.settings
        return f"DicomTarget({self.name!r}, {s.ae_title}@{s.host}:{s.port})"

    def deliver(self, item: WritebackItem) -> str:
        outcome = self.sender.send(job_of(item), object_paths(item))
        return f"{outcome.detail}: {outcome.instances} object(s)"
