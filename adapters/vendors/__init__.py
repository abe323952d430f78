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

import difflib
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, TypeVar

from broker.errors import VendorError

GROUP = "radbridge.vendors"
#: Built-in transports: name -> the module that registers it.
BUILTIN = {
    "dicom": "adapters.vendors.dicom",
    "dicomweb": "adapters.vendors.dicomweb",
    "http": "adapters.vendors.http",
}
#: Transports the design names that are not built yet.
PLANNED: tuple[str, ...] = ()

_REGISTRY: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a transport available under ``name``."""

    def decorate(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise VendorError(
                f"vendor transport '{name}' is registered twice: "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[name] = cls
        return cls

    return decorate


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """Every transport name that can be used now."""
    return sorted({*_REGISTRY, *BUILTIN, *_entry_points()})


def transport_for(name: str) -> type[Any]:
    """The transport class registered as ``name``; a typo gets a suggestion."""
    if name not in _REGISTRY and name in BUILTIN:
        import_module(BUILTIN[name])
    if name not in _REGISTRY:
        found = _entry_points().get(name)
        if found is not None:
            _REGISTRY.setdefault(name, found.load())
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in PLANNED:
        raise VendorError(
            f"vendor transport '{name}' is not built yet; valid: {', '.join(names())}"
        )
    known = [*names(), *PLANNED]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(sorted(known))}"
    raise VendorError(f"no such vendor transport '{name}'; {hint}")
