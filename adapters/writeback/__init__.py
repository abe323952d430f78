"""Write-back targets: how a result gets back to the PACS, the RIS or an EMR, by name.

Like the vendor transports, a name maps to a class::

    @register("dicom")
    class DicomTarget: ...

    target_for("dicom").from_params("pacs", {"ae_title": "PACS", ...})

The broker finds :func:`target_for` through the ``radbridge.registries``
entry point ``writeback_targets``. Other packages add target types as
``radbridge.writeback`` entry points. An unknown name fails with the closest
known one: "no such write-back target 'dicomweb2'; did you mean 'dicomweb'?".

Built: ``dicom`` (C-STORE), ``dicomweb`` (STOW-RS), ``hl7`` (ORU^R01 over
MLLP, and ORM^O01 order-status updates), ``fhir`` (DiagnosticReport and
Observations in a transaction Bundle) and ``webhook`` (the notifications).
"""

from __future__ import annotations

from adapters.registry import Registry
from broker.model.errors import AdapterError

GROUP = "radbridge.writeback"
#: Built-in target types: name -> the module that registers it.
BUILTIN = {
    "dicom": "adapters.writeback.dicom",
    "dicomweb": "adapters.writeback.dicomweb",
    "hl7": "adapters.writeback.hl7",
    "fhir": "adapters.writeback.fhir",
    "webhook": "adapters.writeback.webhook",
}

_REGISTRY = Registry("write-back target", GROUP, BUILTIN, AdapterError)
register = _REGISTRY.register
names = _REGISTRY.names
target_for = _REGISTRY.get

__all__ = ["BUILTIN", "GROUP", "names", "register", "target_for"]
