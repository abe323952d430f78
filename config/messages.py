"""What a validation error says: what was wrong at a field, and what would have been valid.

``describe(error, model)`` turns one pydantic error into the text the loader
prints after ``FILE:LINE: field:``; the hint of valid values comes from the
field's annotation in ``model`` (the whole settings, or a plugin's own
settings model), e.g. "valid: an integer from 1 to 65535".
"""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]


def field_annotation(root: type[BaseModel], loc: Loc) -> tuple[Any, list[Any]] | None:
    """The type annotation and constraints of the field at ``loc`` below ``root``, if any."""
    model: Any = root
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


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The settings model at ``loc`` below ``root`` (``root`` itself for an empty ``loc``)."""
    found = field_annotation(root, loc) if loc else (root, [])
    model = _unwrap(found[0]) if found else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def valid_values(root: type[BaseModel], loc: Loc, error_type: str) -> str:
    """What would have been valid at ``loc`` (after "valid: "), or nothing when unknown."""
    if error_type == "extra_forbidden":
        model = model_at(root, loc[:-1])
        return "known fields: " + ", ".join(model.model_fields) if model else ""
    found = field_annotation(root, loc)
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
            return f"{kind} {low}" + (f" and at most {high}" if high is not None else "")
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


def without_password(text: str) -> str:
    """``scheme://user:secret@host`` becomes ``scheme://user:***@host``: errors never echo it."""
    scheme, sep, rest = text.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def describe(error: ErrorDetails, root: type[BaseModel], loc: Loc) -> str:
    """What ``error`` at ``loc`` (below ``root``) says: the problem, the input, what is valid."""
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown field '{loc[-1]}'"
    elif "input" in error and not isinstance(error["input"], dict | list):
        problem, sep, valid = message.partition("; valid:")
        got = f" (got {without_password(repr(error['input']))})"
        if repr(error["input"]) not in problem:
            message = f"{problem}{got}{sep}{valid}"
    valid = "" if "valid:" in message else valid_values(root, loc, error["type"])
    return message + (f"; valid: {valid}" if valid else "")
