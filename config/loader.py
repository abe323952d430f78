"""Load settings from a YAML file and the environment, with line-accurate errors.

``load_settings(path)`` reads the YAML, overlays ``RADBRIDGE_*`` environment
variables (``__`` separates nested names: ``RADBRIDGE_DICOM__LISTEN__PORT``),
and validates the result with the pydantic schema. Every problem is reported
as ``FILE:LINE: field: what is wrong; valid: what would have been valid``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from broker.model.errors import ConfigError
from config.base import LocatedErrors
from config.messages import describe
from config.plugins import plugin_secrets
from config.schema import SECRET_FIELDS, Settings

ENV_PREFIX = "RADBRIDGE_"
CONFIG_ENV = "RADBRIDGE_CONFIG"
#: Variables of the command line, not settings: the file, the REST API token of
#: ``radbridge config reload``, the harness's callback token, the CLI's language.
CLIENT_ENV = frozenset(
    {CONFIG_ENV, "RADBRIDGE_API_TOKEN", "RADBRIDGE_HARNESS_TOKEN", "RADBRIDGE_LANG"}
)

Loc = tuple[str | int, ...]


class _Source:
    """Where each value came from: a line of the YAML file or an environment variable."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.env: dict[Loc, str] = {}
        self.problems: list[str] = []
        """What the reading itself found wrong (a key given twice)."""

    def where(self, loc: Loc) -> str:
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            if prefix in self.env:
                return f"environment {self.env[prefix]}"
            if prefix in self.lines:
                return f"{self.file}:{self.lines[prefix]}"
        return self.file


def _to_python(node: yaml.Node, loc: Loc, source: _Source) -> Any:
    source.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in out:
                field = ".".join(str(p) for p in (*loc, key))
                source.problems.append(
                    f"{source.file}:{key_node.start_mark.line + 1}: {field}: duplicate key "
                    f"(first at line {source.lines[(*loc, key)]}); valid: each key once "
                    "(a second one would silently replace the first)"
                )
            out[key] = _to_python(value_node, (*loc, key), source)
            # A block mapping or list starts on the line after its key: point at the key.
            source.lines[(*loc, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*loc, i), source) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _read_yaml(path: Path, source: _Source) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and (mark is None or start.line != mark.line):
            problem += f" ({context} that starts at line {start.line + 1})"
        raise ConfigError(f"{path}{line}: not valid YAML: {problem}") from exc
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"{path}:{node.start_mark.line + 1}: the top level must be a mapping "
            "(site:, storage:, dicom:, …)"
        )
    data = _to_python(node, (), source)
    assert isinstance(data, dict)
    return data


def _overlay_env(
    data: dict[str, Any],
    environ: Mapping[str, str],
    source: _Source,
    secrets: Sequence[tuple[str, ...]],
) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in CLIENT_ENV:
            continue
        parts = name.removeprefix(ENV_PREFIX).split("__")
        node: dict[str, Any] = data
        loc: list[str] = []
        for i, part in enumerate(parts):
            key = next((k for k in node if str(k).lower() == part.lower()), part.lower())
            loc.append(key)
            if i == len(parts) - 1:
                is_secret = _is_secret(tuple(loc), secrets)
                node[key] = raw if is_secret else yaml.safe_load(raw) if raw else raw
            else:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
        source.env[tuple(loc)] = name


def _is_secret(loc: Loc, secrets: Sequence[tuple[str, ...]]) -> bool:
    """True when ``loc`` is a secret field (``*`` in a pattern matches any key)."""
    return any(
        len(loc) == len(path)
        and all(p in ("*", str(part)) for p, part in zip(path, loc, strict=True))
        for path in secrets
    )


def _secret_paths(
    data: dict[str, Any], secrets: Sequence[tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """The secret fields present in ``data``, with ``*`` expanded to the keys there."""
    paths: list[tuple[str, ...]] = []
    for pattern in secrets:
        found: list[tuple[tuple[str, ...], Any]] = [((), data)]
        for part in pattern:
            found = [
                ((*path, str(key)), value)
                for path, node in found
                if isinstance(node, dict)
                for key, value in node.items()
                if part in ("*", str(key))
            ]
        paths += [path for path, value in found if value is not None]
    return paths


def _reject_yaml_secrets(
    data: dict[str, Any], source: _Source, secrets: Sequence[tuple[str, ...]]
) -> list[str]:
    problems = []
    for path in _secret_paths(data, secrets):
        if path not in source.env:
            var = ENV_PREFIX + "__".join(p.upper() for p in path)
            problems.append(
                f"{source.where(path)}: {'.'.join(path)}: secrets are not read from the "
                f"configuration file; set the environment variable {var} instead"
            )
    return problems


def _format_errors(exc: ValidationError, source: _Source) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        located = err.get("ctx", {}).get("error")
        if isinstance(located, LocatedErrors):
            for below, message in located.items:
                at = (*loc, *below)
                where, field = source.where(at), ".".join(str(p) for p in at) or "(top level)"
                problems.append(f"{where}: {field}: {message}")
            continue
        field = ".".join(str(p) for p in loc) or "(top level)"
        problems.append(f"{source.where(loc)}: {field}: {describe(err, Settings, loc)}")
    return problems


def config_path(path: str | Path | None) -> Path:
    """The configuration file to use: the argument, else ``$RADBRIDGE_CONFIG``."""
    chosen = path or os.environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError(f"no configuration file; pass -c FILE or set {CONFIG_ENV}")
    return Path(chosen)


def load_settings(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, overlay and validate the configuration; raise ConfigError listing every problem."""
    file = config_path(path)
    source = _Source(str(file))
    data = _read_yaml(file, source)
    secrets = [*SECRET_FIELDS, *plugin_secrets(data)]
    problems = [*source.problems, *_reject_yaml_secrets(data, source, secrets)]
    _overlay_env(data, os.environ if environ is None else environ, source, secrets)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems += _format_errors(exc, source)
        settings = None
    if problems or settings is None:
        raise ConfigError(f"{file}: invalid configuration", problems)
    return _resolve_paths(settings, file)


def _resolve_paths(settings: Settings, file: Path) -> Settings:
    """Relative spool and SQLite paths are relative to the configuration file."""
    base = file.resolve().parent
    storage = settings.storage
    spool = storage.spool if storage.spool.is_absolute() else base / storage.spool
    database = storage.database
    prefix = "sqlite:///"
    if database.startswith(prefix) and not database.startswith(prefix + "/"):
        rel = database.removeprefix(prefix)
        if rel and rel != ":memory:":
            database = prefix + str((base / rel).resolve())
    new_storage = storage.model_copy(update={"spool": spool.resolve(), "database": database})
    return settings.model_copy(update={"storage": new_storage})
