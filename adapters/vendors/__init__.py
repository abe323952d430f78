"""Vendor transports: how a study gets to an AI vendor, registered by name.

Like kombu's transports, a name maps to a class::

    @register("dicom")
    class DicomTransport: ...

    transport_for("dicom").from_params("lungai", {"ae_title": "LUNGAI", ...})

Built-in transports are imported when first asked for; other packages add
theirs as ``radbridge.vendors`` entry points. An unknown name fails with the
closest known one: "no such vendor transport 'dicomweb2'; did you mean
'dicomweb'?".

Built: ``dicom`` (C-STORE push), ``dicomweb`` (STOW-RS push) and ``http``
(JSON manifest + WADO-RS pull).
"""

from __future__ import annotations

from adapters.registry import Registry
from broker.model.errors import VendorError

GROUP = "radbridge.vendors"
#: Built-in transports: name -> the module that registers it.
BUILTIN = {
    "dicom": "adapters.vendors.dicom",
    "dicomweb": "adapters.vendors.dicomweb",
    "http": "adapters.vendors.http",
}

_REGISTRY = Registry("vendor transport", GROUP, BUILTIN, VendorError)
register = _REGISTRY.register
names = _REGISTRY.names
transport_for = _REGISTRY.get

__all__ = ["BUILTIN", "GROUP", "names", "register", "transport_for"]
