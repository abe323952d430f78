"""The vendor transport plugin: its settings, the Protocol the broker drives, its registry.

A transport is one module (``adapters/vendors/dicom.py``, or a third party's)
with two parts, like a kombu transport:

- its settings, a subclass of :class:`TransportSettings`. Its ``type`` field
  is a ``Literal`` whose default is the transport's name, the name a
  vendor's ``transport: {type: …}`` uses; its other fields are validated
  when the configuration is loaded. Its :meth:`~TransportSettings.build`
  makes the running transport.
- the running transport, a :class:`VendorTransport`: ``send(job, files)``,
  the tuple of its ``retryable`` errors, and, with defaults, ``cancel(job)``,
  ``close()`` and ``closed_until(now)``.

It is registered under its name by an entry point of ``radbridge.transports``::

    [project.entry-points."radbridge.transports"]
    dicom = "adapters.vendors.dicom:DicomPushSettings"

:data:`TRANSPORTS` finds it; the configuration schema and the running service
both use that one registry, so the broker never imports an adapter.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Protocol, TypeGuard

from pydantic import BaseModel, ConfigDict

from broker.model.jobs import Job
from broker.model.plugins import Registry, settings_name, validated


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one successful delivery did."""

    instances: int
    bytes: int
    seconds: float
    detail: str = ""
    deidentified: Mapping[str, object] | None = None
    """What was de-identified (profile, study pseudonym, instances masked and withheld);
    None: sent as received."""

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class VendorTransport(Protocol):
    """One way of getting a study to an AI vendor (DICOM push, DICOMweb, HTTP API).

    ``send`` delivers every file or raises; an exception that is an instance
    of one of ``retryable`` makes the job retry after its backoff, any other
    makes it dead at once. A transport that subclasses this class gets the
    defaults of ``cancel`` and ``close``.
    """

    retryable: tuple[type[Exception], ...]
    pushes_files: ClassVar[bool] = True
    """The files ``send`` gets reach the vendor (a pull by manifest: False); a route's
    priors are fetched only for such a transport."""

    def send(self, job: Job, files: Sequence[Path]) -> SendOutcome: ...

    def cancel(self, job: Job, reason: str = "") -> bool:
        """Tell the vendor ``job`` is cancelled (``reason``: why, in a few words); False when
        the protocol has no way to. Raises like ``send`` when the vendor could not be told."""
        return False

    def close(self) -> None:
        """Let go of connections (when the configuration it was built from retires)."""
        return None

    def closed_until(self, now: datetime) -> datetime | None:
        """None while the vendor may be sent to; else when it may again (a link's time
        windows): its jobs wait, pending, unclaimed, until then."""
        return None


#: How the write-back target that tells vendor NAME of cancellations is named: ``vendor.NAME``.
VENDOR_TARGET_PREFIX = "vendor."
#: The target type of those targets (a delivery's ``target_type``).
VENDOR_TARGET_TYPE = "vendor"


def vendor_target(vendor: str) -> str:
    """The target name of ``vendor``'s cancellations (``vendor.cxrai``)."""
    return f"{VENDOR_TARGET_PREFIX}{vendor}"


def is_retryable(transport: VendorTransport, error: BaseException) -> bool:
    """The one place that decides whether a failed send is tried again."""
    return isinstance(error, transport.retryable)


@dataclass(frozen=True, slots=True)
class TransportContext:
    """What the service tells a transport when it builds it, besides its own settings."""

    vendor: str
    """The vendor's name in the configuration."""
    product: str = ""
    result_timeout: float = 900.0
    """Seconds the vendor has for its result (the vendor's ``timeout``)."""
    public_url: str = "http://127.0.0.1:8080"
    """radbridge's HTTP server as vendors reach it (``http.public_url``)."""
    database_url: str = field(default="", repr=False)
    """The store's SQLAlchemy URL, password included (never logged)."""
    timezone: str = "UTC"
    """This radbridge's clock (``site.timezone``): a link's time windows are in it."""
    concurrency: int = 1
    """The vendor's ``concurrency``: at most this many of its jobs are sent at once, over
    every worker process and node (claims in the store, :mod:`broker.store.jobs`)."""


class TransportSettings(BaseModel):
    """A vendor transport plugin: its settings, its name, and how it is built.

    Subclasses declare ``type: Literal["name"] = "name"`` and their own fields;
    unknown fields are errors. ``pulls_from_radbridge`` says that vendors of
    this transport fetch studies from radbridge's HTTP server (which then runs);
    ``tells_cancellation`` that its ``cancel`` reaches the vendor.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    pulls_from_radbridge: ClassVar[bool] = False
    tells_cancellation: ClassVar[bool] = False
    """The transport's ``cancel`` tells the vendor (its HTTP API): a correction of a study
    already sent reaches the vendor as a delivery to the target ``vendor.NAME``."""

    @abstractmethod
    def build(self, context: TransportContext) -> VendorTransport:
        """The running transport for the vendor ``context.vendor``."""

    @classmethod
    def from_params(
        cls,
        vendor: str,
        params: Mapping[str, object],
        context: TransportContext | None = None,
    ) -> VendorTransport:
        """The running transport from plain settings (code and tests; the service builds
        from the loaded configuration). Problems raise ConfigError naming
        ``vendors.VENDOR.transport.FIELD``."""
        settings = validated(cls, params, f"vendors.{vendor}.transport")
        return settings.build(context or TransportContext(vendor))

    def endpoint(self) -> tuple[str, int] | None:
        """(host, port) the transport connects to, for reachability probes; None: unknown."""
        return None

    def sender_ae_titles(self) -> tuple[str, ...]:
        """AE titles the vendor's results may come from by default (its own AE, for DICOM)."""
        return ()


def _is_transport(obj: object) -> TypeGuard[type[TransportSettings]]:
    return isinstance(obj, type) and issubclass(obj, TransportSettings)


TRANSPORTS: Registry[TransportSettings] = Registry(
    "vendor transport", "radbridge.transports", _is_transport, settings_name
)
"""Every vendor transport, by name."""
