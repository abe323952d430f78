"""What the vendor transports share: the two kinds of failure a send can have.

Each transport is one module of this package (``dicom``, ``dicomweb``,
``http``): a settings model that subclasses
:class:`broker.model.vendor.TransportSettings` and declares the transport's
name, and the running :class:`~broker.model.vendor.VendorTransport`. It is
registered by an entry point of ``radbridge.transports`` in
``pyproject.toml``. Every built-in transport retries what raises
:class:`VendorUnavailableError` and gives up on :class:`VendorRejectedError`.
"""

from __future__ import annotations

from broker.model.errors import VendorError


class VendorUnavailableError(VendorError):
    """The vendor could not take the study now (down, busy, refused); worth retrying."""


class VendorRejectedError(VendorError):
    """The vendor refused the study for good (unsupported, invalid); retrying cannot help."""
