"""The interface every vendor transport implements, and the errors they raise.

A transport is a class registered by name (``@register("dicom")`` in
:mod:`adapters.vendors`) built from the ``transport:`` settings of a vendor
with ``from_params``; the broker calls ``send(job, files)`` and, when an
operator cancels a job, ``cancel(job)`` if the transport has it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Self, TypeVar

from pydantic import BaseModel, ValidationError

from broker.model.errors import ConfigError, VendorError
from broker.model.vendor import Cancellable, SendOutcome, VendorTransport, is_retryable

__all__ = [
    "Cancellable",
    "SendOutcome",
    "TransportType",
    "VendorRejectedError",
    "VendorTransport",
    "VendorUnavailableError",
    "is_retryable",
    "transport_settings",
]


class VendorUnavailableError(VendorError):
    """The vendor could not take the study now (down, busy, refused); worth retrying."""


class VendorRejectedError(VendorError):
    """The vendor refused the study for good (unsupported, invalid); retrying cannot help."""


class TransportType(Protocol):
    """A registered transport class: builds a transport from a vendor's settings."""

    @classmethod
    def from_params(cls, vendor: str, params: Mapping[str, Any]) -> Self: ...


M = TypeVar("M", bound=BaseModel)


def transport_settings(model: type[M], vendor: str, params: Mapping[str, Any]) -> M:
    """A transport's settings validated; problems named ``vendors.NAME.transport.FIELD``."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        problems = [
            f"vendors.{vendor}.transport.{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        ]
        raise ConfigError(problems[0], problems) from exc
