"""The write-back target plugin: its settings, the Protocol the broker drives, its registry.

A target type is one module (``adapters/writeback/hl7.py``, or a third
party's) with two parts:

- its settings, a subclass of :class:`TargetSettings`. Its ``type`` field is a
  ``Literal`` whose default is the type's name, the name ``targets: {NAME:
  {type: …}}`` uses; its other fields are validated when the configuration is
  loaded. Every target also has ``retries``. :meth:`~TargetSettings.build`
  makes the running target.
- the running target, a :class:`WritebackTarget`: ``deliver(item)``, the tuple
  of its ``retryable`` errors, and, with a default, ``close()``.

It is registered under its name by an entry point of ``radbridge.targets``::

    [project.entry-points."radbridge.targets"]
    hl7 = "adapters.writeback.hl7:Hl7TargetSettings"

:data:`TARGETS` finds it, for the configuration schema and the running service.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, ClassVar, Protocol, TypeGuard

from pydantic import BaseModel, ConfigDict, Field

from broker.model.errors import CorrectionUnsupportedError
from broker.model.plugins import Registry, settings_name, validated

if TYPE_CHECKING:
    from broker.model.writeback import WritebackItem


class WritebackTarget(Protocol):
    """One way of writing a result back (C-STORE, STOW-RS, HL7 ORU, FHIR, webhook).

    ``deliver`` does one attempt and returns what it did, or raises; an
    exception that is an instance of one of ``retryable`` makes the delivery
    retry after its backoff, any other makes it dead at once. A target that
    subclasses this class gets the default ``close``.
    """

    retryable: tuple[type[Exception], ...]

    def deliver(self, item: WritebackItem) -> str: ...

    def correct(self, item: WritebackItem) -> str:
        """Withdraw or correct what the ``result`` delivery ``item.original`` wrote
        (:mod:`broker.model.correction`); one attempt, like :meth:`deliver`."""
        raise CorrectionUnsupportedError(
            f"{type(self).__name__} cannot withdraw or correct what it wrote; "
            "correct it at the target by hand"
        )

    def close(self) -> None:
        """Let go of connections (when the stage stops or its configuration retires)."""
        return None


def correct(target: WritebackTarget, item: WritebackItem) -> str:
    """One attempt of a correction delivery with ``target`` (a third party's target that does
    not subclass :class:`WritebackTarget` and has no ``correct`` cannot carry it out)."""
    method = getattr(target, "correct", None)
    if method is None:
        return WritebackTarget.correct(target, item)
    return str(method(item))


def is_retryable(target: WritebackTarget, error: BaseException) -> bool:
    """The one place that decides whether a failed write-back is tried again."""
    return isinstance(error, target.retryable)


class TargetSettings(BaseModel):
    """A write-back target plugin: its settings, its name, and how it is built.

    Subclasses declare ``type: Literal["name"] = "name"`` and their own fields;
    unknown fields are errors. ``retries`` (the most attempts of one
    delivery) fits every type. ``takes_order_status`` says the type can carry
    the RIS order-status updates of ``notifications.ris_status``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    retries: Annotated[int, Field(ge=1, le=100)] = 5
    takes_order_status: ClassVar[bool] = False

    @abstractmethod
    def build(self, name: str) -> WritebackTarget:
        """The running target configured as ``targets.NAME``."""

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, object]) -> WritebackTarget:
        """The running target from plain settings (code and tests; the service builds from
        the loaded configuration). Problems raise ConfigError naming ``targets.NAME.FIELD``."""
        return validated(cls, params, f"targets.{name}").build(name)

    def endpoint(self) -> tuple[str, int] | None:
        """(host, port) the target connects to, for reachability probes; None: unknown."""
        return None


def _is_target(obj: object) -> TypeGuard[type[TargetSettings]]:
    return isinstance(obj, type) and issubclass(obj, TargetSettings)


TARGETS: Registry[TargetSettings] = Registry(
    "write-back target", "radbridge.targets", _is_target, settings_name
)
"""Every write-back target type, by name."""
