"""The interface every vendor transport implements, and the errors they raise.

A transport is a class registered by name (``@register("dicom")`` in
:mod:`adapters.vendors`) built from the ``transport:`` settings of a vendor
with ``from_params``; the broker calls ``send(job, files)`` and, when an
operator cancels a job, ``cancel(job)`` if the transport has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Self

from broker.errors import VendorError
from broker.vendor import Cancellable, SendOutcome, VendorTransport, is_retryable

__all__ = [
    "Cancellable",
    "SendOutcome",
    "TransportType",
    "VendorRejectedError",
    "VendorTransport",
    "VendorUnavailableError",
    "is_retryable",
]


class VendorUnavailableError(VendorError):
    """The vendor could not take the study now (down, busy, refused); worth retrying."""


class VendorRejectedError(VendorError):
    """The vendor refused the study for good (unsupported, invalid); retrying cannot help."""


class TransportType(Protocol):
    """A registered transport class: builds a transport from a vendor's settings."""

    @classmethod
    def from_params(cls, vendor: str, params: Mapping[str, Any]) -> Self: ...
