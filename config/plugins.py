"""Settings blocks whose model a plugin declares: a vendor's ``transport``, each target.

The ``type`` of the block names a plugin in a registry
(:data:`broker.model.vendor.TRANSPORTS`, :data:`broker.model.target.TARGETS`);
that plugin's own settings model validates the rest, the way a pydantic
discriminated union picks its member by the tag. The union is open: a plugin
installed by entry point is a member as soon as it is installed, and only the
plugins a configuration names are imported to validate it. The JSON schema of
the settings (``Settings.model_json_schema()``) spells the union out: a
``oneOf`` of every registered plugin's settings, discriminated by ``type``.
Every problem is reported at its own field: "vendors.lungai.transport.port:
Input should be less than or equal to 65535 (got 70000); valid: an integer
from 1 to 65535".
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar, Union

from pydantic import (
    BaseModel,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    SecretStr,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from broker.model.errors import ConfigError
from broker.model.plugins import Registry
from broker.model.target import TARGETS, TargetSettings
from broker.model.vendor import TRANSPORTS, TransportSettings
from config.base import LocatedErrors
from config.messages import Loc, describe

P = TypeVar("P", bound=BaseModel)


def chosen_by_type(registry: Registry[P], noun: str) -> Callable[[object], P]:
    """A validator: the block's ``type`` picks the registered model that validates it.

    ``noun`` names the block in messages ("url is not used by the dicom transport").
    """

    def validate(value: object) -> P:
        if registry.is_instance(value):
            return value
        if not isinstance(value, dict):
            raise ValueError(
                f"a {registry.what} is a mapping like {{type: NAME, …}}, not {value!r}; "
                f"valid: NAME one of {', '.join(registry.names())}"
            )
        name = value.get("type")
        if name is None:
            raise LocatedErrors(
                [
                    (
                        (),
                        f"a {noun} needs a type; valid: {{type: NAME, …}} with NAME one of "
                        f"{', '.join(registry.names())}",
                    )
                ]
            )
        try:
            model = registry.get(str(name))
        except ConfigError as exc:
            raise LocatedErrors([(("type",), str(exc))]) from exc
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            raise LocatedErrors(_problems(exc, model, f"the {name} {noun}")) from exc

    return validate


def _problems(exc: ValidationError, model: type[BaseModel], what: str) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
        located = error.get("ctx", {}).get("error")
        if isinstance(located, LocatedErrors):
            problems += [((*loc, *below), message) for below, message in located.items]
        elif error["type"] == "extra_forbidden" and len(loc) == 1:
            fields = ", ".join(model.model_fields)
            problems.append((loc, f"{loc[0]} is not used by {what}; valid: {fields}"))
        else:
            problems.append((loc, describe(error, model, loc)))
    return problems


def _secrets_of(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` that hold secrets (``SecretStr``)."""
    return [
        name
        for name, field in model.model_fields.items()
        if SecretStr in (field.annotation, *typing.get_args(field.annotation))
    ]


def _model(registry: Registry[P], block: object) -> type[P] | None:
    name = block.get("type") if isinstance(block, dict) else None
    if not isinstance(name, str):
        return None
    try:
        return registry.get(name)
    except ConfigError:
        return None  # validation reports the unknown name


def plugin_secrets(data: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Where the plugins named in ``data`` keep secrets: every ``SecretStr`` field of a
    vendor's transport and of a target, as paths like ``vendors.NAME.transport.FIELD``.
    Like the fixed secrets of the schema, they are read only from the environment."""
    found: list[tuple[str, ...]] = []
    vendors = data.get("vendors")
    for vendor, settings in vendors.items() if isinstance(vendors, dict) else ():
        block = settings.get("transport") if isinstance(settings, dict) else None
        model = _model(TRANSPORTS, block)
        fields = _secrets_of(model) if model is not None else []
        found += [("vendors", str(vendor), "transport", field) for field in fields]
    targets = data.get("targets")
    for target, block in targets.items() if isinstance(targets, dict) else ():
        target_model = _model(TARGETS, block)
        fields = _secrets_of(target_model) if target_model is not None else []
        found += [("targets", str(target), field) for field in fields]
    sites = data.get("sites")
    for site, block in sites.items() if isinstance(sites, dict) else ():
        own = block.get("targets") if isinstance(block, dict) else None
        for target, target_block in own.items() if isinstance(own, dict) else ():
            target_model = _model(TARGETS, target_block)
            fields = _secrets_of(target_model) if target_model is not None else []
            found += [("sites", str(site), "targets", str(target), f) for f in fields]
    return found


class RegisteredUnion:
    """The JSON schema of a plugin block: the discriminated union (by ``type``) of every
    plugin registered when the schema is made, each with its own settings model."""

    def __init__(self, registry: Registry[P]) -> None:
        self.models: Callable[[], tuple[type[BaseModel], ...]] = lambda: tuple(
            registry.all().values()
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        models = self.models()
        if not models:
            return handler(schema)
        # A union built at run time, of what is registered now: no static type can say it.
        members = Union[models]  # type: ignore[valid-type]  # noqa: UP007
        union = TypeAdapter(Annotated[members, Field(discriminator="type")])
        return handler(union.core_schema)


TransportBlock = Annotated[
    SerializeAsAny[TransportSettings],
    PlainValidator(chosen_by_type(TRANSPORTS, "transport")),
    RegisteredUnion(TRANSPORTS),
]
"""A vendor's ``transport:`` block, validated (and dumped) by the settings model of its
``type``."""
TargetBlock = Annotated[
    SerializeAsAny[TargetSettings],
    PlainValidator(chosen_by_type(TARGETS, "target")),
    RegisteredUnion(TARGETS),
]
"""One ``targets:`` entry, validated (and dumped) by the settings model of its ``type``."""
