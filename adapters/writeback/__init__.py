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

import difflib
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, TypeVar

from broker.errors import AdapterError

GROUP = "radbridge.writeback"
BUILTIN = {
    "dicom": "adapters.writeback.dicom",
    "dicomweb": "adapters.writeback.dicomweb",
    "hl7": "adapters.writeback.hl7",
    "fhir": "adapters.writeback.fhir",
    "webhook": "adapters.writeback.webhook",
}

_REGISTRY: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a write-back target type available under ``name``."""

    def decorate(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise AdapterError(
                f"write-back target '{name}' is registered twice: "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[name] = cls
        return cls

    return decorate


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """Every target type that can be used now."""
    return sorted({*_REGISTRY, *BUILTIN, *_entry_points()})


def target_for(name: str) -> type[Any]:
    """The target class registered as ``name``; a typo gets a suggestion."""
    if name not in _REGISTRY and name in BUILTIN:
        import_module(BUILTIN[name])
    if name not in _REGISTRY:
        found = _entry_points().get(name)
        if found is not None:
            _REGISTRY.setdefault(name, found.load())
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, names(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(names())}"
    raise AdapterError(f"no such write-back target '{name}'; {hint}")
