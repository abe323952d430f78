"""Settings blocks whose model a plugin declares: a vendor's ``transport``, each target.

The ``type`` of the block names a plugin in a registry
(:data:`broker.model.vendor.TRANSPORTS`, :data:`broker.model.target.TARGETS`);
that plugin's own settings model validates the rest, the way a pydantic
discriminated union picks its member by the tag. The union is open: a plugin
installed by entry point is a member as soon as it is installed, and only the
plugins a configuration names are imported. Every problem is reported at its
own field: "vendors.lungai.transport.port: Input should be less than or equal
to 65535 (got 70000); valid: an integer from 1 to 65535".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from pydantic import BaseModel, PlainValidator, ValidationError

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


TransportBlock = Annotated[
    TransportSettings, PlainValidator(chosen_by_type(TRANSPORTS, "transport"))
]
"""A vendor's ``transport:`` block, validated by the settings model of its ``type``."""
TargetBlock = Annotated[TargetSettings, PlainValidator(chosen_by_type(TARGETS, "target"))]
"""One ``targets:`` entry, validated by the settings model of its ``type``."""
