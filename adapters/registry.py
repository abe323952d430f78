"""Name → class registries for pluggable adapter types (vendor transports, write-back
targets), like kombu's transports.

Built-in types are imported when first asked for; other packages add theirs as entry
points of the registry's group. An unknown name fails with the closest known one:
"no such vendor transport 'dicomweb2'; did you mean 'dicomweb'?".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, TypeVar

from broker.model.errors import RadbridgeError, did_you_mean

T = TypeVar("T", bound=type[Any])


class Registry:
    """Classes registered under names, for one kind of adapter (``what`` names it in errors)."""

    def __init__(
        self,
        what: str,
        group: str,
        builtin: Mapping[str, str],
        error: type[RadbridgeError],
    ) -> None:
        self.what = what
        self.group = group
        self.builtin = dict(builtin)
        """Built-in names and the module that registers each."""
        self.error = error
        self._classes: dict[str, type[Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make ``cls`` available under ``name``."""

        def decorate(cls: T) -> T:
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise self.error(
                    f"{self.what} '{name}' is registered twice: "
                    f"{existing.__module__}.{existing.__qualname__} and "
                    f"{cls.__module__}.{cls.__qualname__}"
                )
            self._classes[name] = cls
            return cls

        return decorate

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name that can be used now."""
        return sorted({*self._classes, *self.builtin, *self._entry_points()})

    def get(self, name: str) -> type[Any]:
        """The class registered as ``name``; a typo gets a suggestion."""
        if name not in self._classes and name in self.builtin:
            import_module(self.builtin[name])
        if name not in self._classes:
            found = self._entry_points().get(name)
            if found is not None:
                self._classes.setdefault(name, found.load())
        if name in self._classes:
            return self._classes[name]
        hint = did_you_mean(name, self.names(), or_list=True)
        raise self.error(f"no such {self.what} '{name}'{hint}")
