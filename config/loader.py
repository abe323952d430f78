"""Load settings from a YAML file and the environment, with line-accurate errors.

``load_settings(path)`` reads the YAML, overlays ``RADBRIDGE_*`` environment
variables (``__`` separates nested names: ``RADBRIDGE_DICOM__LISTEN__PORT``),
and validates the result with the pydantic schema. Every problem is reported
as ``FILE:LINE: field: what is wrong; valid: what would have been valid``.
"""

from __future__ import annotations

import enum
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from broker.model.errors import ConfigError
from config.base import LocatedErrors
from config.schema import SECRET_FIELDS, Settings

ENV_PREFIX = "RADBRIDGE_"
CONFIG_ENV = "RADBRIDGE_CONFIG"
#: Variables of the command line, not settings: the file, the REST API token of
#: ``radbridge config reload``, the harness's callback token.
CLIENT_ENV = frozenset({CONFIG_ENV, "RADBRIDGE_API_TOKEN", "RADBRIDGE_HARNESS_TOKEN"})

Loc = tuple[str | int, ...]


class _Source:
    """Where each value came from: a line of the YAML file or an environment variable."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.env: dict[Loc, str] = {}

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


def _overlay_env(data: dict[str, Any], environ: Mapping[str, str], source: _Source) -> None:
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
                is_secret = _is_secret(tuple(loc))
                node[key] = raw if is_secret else yaml.safe_load(raw) if raw else raw
            else:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
        source.env[tuple(loc)] = name


def _is_secret(loc: Loc) -> bool:
    """True when ``loc`` is a secret field (``*`` in SECRET_FIELDS matches any key)."""
    return any(
        len(loc) == len(path)
        and all(p in ("*", str(part)) for p, part in zip(path, loc, strict=True))
        for path in SECRET_FIELDS
    )


def _secret_paths(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """The secret fields present in ``data``, with ``*`` expanded to the keys there."""
    paths: list[tuple[str, ...]] = []
    for pattern in SECRET_FIELDS:
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


def _reject_yaml_secrets(data: dict[str, Any], source: _Source) -> list[str]:
    problems = []
    for path in _secret_paths(data):
        if path not in source.env:
            var = ENV_PREFIX + "__".join(p.upper() for p in path)
            problems.append(
                f"{source.where(path)}: {'.'.join(path)}: secrets are not read from the "
                f"configuration file; set the environment variable {var} instead"
            )
    return problems


def _field_annotation(loc: Loc) -> tuple[Any, list[Any]] | None:
    """The type annotation and constraints of the field at ``loc``, if it is one."""
    model: Any = Settings
    annotation: Any = None
    metadata: list[Any] = []
    for part in loc:
        if isinstance(part, int) and typing.get_origin(_unwrap_optional(annotation)) is list:
            continue  # an item of a list: ``model`` is already the item type
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            annotation, metadata = field.annotation, list(field.metadata)
        elif isinstance(part, int) or typing.get_origin(model) is dict:
            args = typing.get_args(model)
            annotation, metadata = (args[-1] if args else Any), []
        else:
            return None
        model = _unwrap(annotation)
    return annotation, metadata


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    return annotation


def _valid_values(loc: Loc, error_type: str) -> str:
    if error_type == "extra_forbidden":
        parent = _field_annotation(loc[:-1]) if loc[:-1] else (Settings, [])
        model = _unwrap(parent[0]) if parent else None
        if isinstance(model, type) and issubclass(model, BaseModel):
            return "known fields: " + ", ".join(model.model_fields)
        return ""
    found = _field_annotation(loc)
    if found is None:
        return ""
    annotation, metadata = found
    inner = _unwrap(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            metadata += list(typing.get_args(arg)[1:])
            inner = typing.get_args(arg)[0]
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    low = (
        low
        if low is not None
        else next(
            (f"more than {m.gt}" for m in metadata if isinstance(m, annotated_types.Gt)), None
        )
    )
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in inner)
    if inner is bool:
        return "true or false"
    if inner in (int, float):
        kind = "an integer" if inner is int else "a number"
        if isinstance(low, str):
            return f"{kind} {low}"
        if low is not None and high is not None:
            return f"{kind} from {low} to {high}"
        if low is not None:
            return f"{kind} of at least {low}"
        return kind
    if inner is Path:
        return "a file system path"
    if inner is str:
        return "text"
    if inner is SecretStr:
        return "a secret from the environment"
    return ""


def _without_password(text: str) -> str:
    """``scheme://user:secret@host`` becomes ``scheme://user:***@host``: errors never echo it."""
    scheme, sep, rest = text.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


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
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field '{loc[-1]}'"
        elif "input" in err and not isinstance(err["input"], dict | list):
            message = f"{message} (got {_without_password(repr(err['input']))})"
        valid = "" if "valid:" in message else _valid_values(loc, err["type"])
        problems.append(
            f"{source.where(loc)}: {field}: {message}" + (f"; valid: {valid}" if valid else "")
        )
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
    problems = _reject_yaml_secrets(data, source)
    _overlay_env(data, os.environ if environ is None else environ, source)
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
