"""What the broker needs from a vendor transport: send a job's files, say which errors retry.

Transports live in ``adapters/vendors/`` and register by name there; the
broker only sees this protocol, so it never imports an adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from broker.model.jobs import Job


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one successful delivery did."""

    instances: int
    bytes: int
    seconds: float
    detail: str = ""

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class VendorTransport(Protocol):
    """One way of getting a study to an AI vendor (DICOM push, DICOMweb, HTTP API).

    ``send`` delivers every file or raises; an exception that is an instance
    of one of ``retryable`` makes the job retry after its backoff, any other
    makes it dead at once.
    """

    retryable: tuple[type[Exception], ...]

    def send(self, job: Job, files: Sequence[Path]) -> SendOutcome: ...


@runtime_checkable
class Cancellable(Protocol):
    """A transport that can tell the vendor a job was cancelled (optional)."""

    def cancel(self, job: Job) -> None: ...


def is_retryable(transport: VendorTransport, error: BaseException) -> bool:
    """The one place that decides whether a failed send is tried again."""
    return isinstance(error, transport.retryable)
