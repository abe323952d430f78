"""How the core finds what adapters provide, without importing an adapter by name.

- :class:`Registry`: the plugins of one kind (vendor transports, write-back
  targets, edges), each found by its name. A plugin is a class that declares
  its own name; it is registered by an entry point of the registry's group
  (``[project.entry-points."radbridge.transports"]`` in a ``pyproject.toml``),
  or in code with :meth:`Registry.register`. Like kombu's transport aliases, a
  name is imported only when it is asked for, and an unknown name fails with
  the closest known one: "no such vendor transport 'dicomweb2'; did you mean
  'dicomweb'?".
- :func:`registered`: single functions the adapter packages declare under
  ``radbridge.registries`` (``study_reader``, ``result_sr``, …).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeGuard, TypeVar

from pydantic import BaseModel, ValidationError

from broker.model.errors import ConfigError, did_you_mean

GROUP = "radbridge.registries"

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def registered(name: str) -> Any:
    """A function an adapter package declares under the ``radbridge.registries`` entry points."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in found:
        raise ConfigError(f"nothing is installed as '{name}' (entry point {GROUP})")
    return found[name].load()


class Registry(Generic[T]):
    """The plugin classes of one kind, by name.

    ``what`` names the kind in messages ("vendor transport"); ``group`` is the
    entry-point group plugins are declared in; ``accepts`` says whether a
    loaded object is a plugin of this kind, ``name_of`` the name it declares.
    """

    def __init__(
        self,
        what: str,
        group: str,
        accepts: Callable[[object], TypeGuard[type[T]]],
        name_of: Callable[[type[T]], str],
    ) -> None:
        self.what = what
        self.group = group
        self._accepts = accepts
        self._name_of = name_of
        self._plugins: dict[str, type[T]] = {}

    def accepts(self, obj: object) -> TypeGuard[type[T]]:
        """Whether ``obj`` is a plugin class of this kind."""
        return self._accepts(obj)

    def is_instance(self, obj: object) -> TypeGuard[T]:
        """Whether ``obj`` is an instance of a plugin class of this kind."""
        return self._accepts(type(obj))

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def register(self, plugin: type[T]) -> type[T]:
        """Make ``plugin`` available under the name it declares (also a class decorator).

        A name already taken by another class is refused, whether that class was
        registered in code or is declared by an entry point not imported yet;
        registering the same class again is harmless.
        """
        if not self._accepts(plugin):
            raise ConfigError(f"{plugin!r} is not a {self.what}")
        name = self._name_of(plugin)
        if name not in self._plugins and (point := self._entry_points().get(name)) is not None:
            self._load(point)
        return self._add(name, plugin)

    def _add(self, name: str, plugin: type[T]) -> type[T]:
        existing = self._plugins.get(name)
        if existing is not None and existing is not plugin:
            raise ConfigError(
                f"{self.what} '{name}' is registered twice: {_qualname(existing)} and "
                f"{_qualname(plugin)}; valid: one class per name"
            )
        self._plugins[name] = plugin
        return plugin

    def unregister(self, name: str) -> None:
        """Forget a plugin registered in code (its entry point, if any, stays)."""
        self._plugins.pop(name, None)

    def names(self) -> list[str]:
        """Every name that can be used now (nothing is imported to list them)."""
        return sorted({*self._plugins, *self._entry_points()})

    def get(self, name: str) -> type[T]:
        """The plugin class registered as ``name``; a typo gets the closest name."""
        found = self._plugins.get(name)
        if found is not None:
            return found
        point = self._entry_points().get(name)
        if point is None:
            raise ConfigError(
                f"no such {self.what} '{name}'{did_you_mean(name, self.names(), or_list=True)}"
            )
        return self._load(point)

    def all(self) -> Mapping[str, type[T]]:
        """Every plugin of this kind, each imported (for listings and contract tests)."""
        return {name: self.get(name) for name in self.names()}

    def _load(self, point: EntryPoint) -> type[T]:
        where = f"entry point '{point.name} = {point.value}' of {self.group}"
        try:
            loaded = point.load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{where} cannot be loaded: {type(exc).__name__}: {exc}; "
                "valid: an importable module:attribute"
            ) from exc
        if not self._accepts(loaded):
            raise ConfigError(f"{where} is {loaded!r}, not a {self.what}")
        declared = self._name_of(loaded)
        if declared != point.name:
            raise ConfigError(
                f"{where} declares the name '{declared}'; valid: the entry point's name "
                "and the plugin's name are the same"
            )
        return self._add(declared, loaded)


def settings_name(model: type[BaseModel]) -> str:
    """The name a plugin's settings model declares: the default of its ``type`` field."""
    declared = model.model_fields.get("type")
    name = declared.default if declared is not None else None
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f'{_qualname(model)} declares no name; valid: a field type: Literal["name"] = "name"'
        )
    return name


def _qualname(cls: type[object]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def validated(model: type[M], params: Mapping[str, object], where: str) -> M:
    """``params`` validated as ``model``; problems named ``WHERE.FIELD: message``."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        problems = [
            f"{'.'.join((where, *map(str, e['loc'])))}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise ConfigError(problems[0], problems) from exc
