"""``hl7`` target: the result as ORU^R01 over MLLP to the RIS, and order-status updates.

Each delivery sends one message with :class:`adapters.hl7.client.MllpClient`
and waits for its ACK: ``AA`` (or ``CA``) is done; ``AE``, ``AR``, no ACK
within ``timeout`` or no connection make the delivery retry with the
write-back backoff (the client itself tries once per delivery attempt), and
dead after the target's ``retries``. The message control ID (MSH-10) is the
delivery's ``message_id``, fixed when the delivery was made, and the message
is built from stored data only: a retry sends the same message, which the
RIS can recognise as a duplicate.

- ``result`` deliveries: ORU^R01 (:func:`adapters.hl7.oru.build_oru`);
- ``status`` deliveries (urgent results, ``notifications.ris_status``):
  ORM^O01 with ORC-1 SC and priority S (:func:`adapters.hl7.oru.build_order_status`).

Settings (``targets.NAME``): ``host``, ``port``; optional ``timeout`` (s to
wait for the ACK, default 10), ``application``/``facility`` (MSH-3/4,
default RADBRIDGE), ``receiving_application``/``receiving_facility``
(MSH-5/6), ``charset`` (MSH-18, default ``UNICODE UTF-8``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from adapters.hl7.client import MllpClient
from adapters.hl7.oru import CHARSETS, Header, build_order_status, build_oru
from adapters.writeback import register
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError, target_settings
from broker.model.errors import Hl7Error
from broker.model.writeback import DeliveryKind, WritebackItem
from config.base import Port


class Hl7TargetSettings(BaseModel):
    """A target's settings for ``type: hl7``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: Port
    timeout: float = Field(default=10.0, gt=0, le=3600)
    application: str = "RADBRIDGE"
    facility: str = "RADBRIDGE"
    receiving_application: str = ""
    receiving_facility: str = ""
    charset: str = "UNICODE UTF-8"

    def header(self) -> Header:
        return Header(
            application=self.application,
            facility=self.facility,
            receiving_application=self.receiving_application,
            receiving_facility=self.receiving_facility,
            charset=self.charset,
        )


@register("hl7")
class Hl7Target:
    """ORU^R01 (and ORM^O01 status updates) to one RIS over MLLP. One sending thread."""

    retryable: tuple[type[Exception], ...] = (Hl7Error, TargetUnavailableError)

    def __init__(self, name: str, settings: Hl7TargetSettings) -> None:
        if settings.charset not in CHARSETS:
            raise TargetRejectedError(
                f"targets.{name}.charset: {settings.charset!r}; valid: {', '.join(CHARSETS)}"
            )
        self.name = name
        self.settings = settings
        self.client = MllpClient(
            settings.host,
            settings.port,
            timeout=settings.timeout,
            attempts=1,
            default_charset=CHARSETS[settings.charset],
        )

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> Self:
        """Build from ``targets.NAME``; invalid settings raise ConfigError."""
        return cls(name, target_settings(Hl7TargetSettings, name, params))

    def __repr__(self) -> str:
        return f"Hl7Target({self.name!r}, {self.settings.host}:{self.settings.port})"

    def message(self, item: WritebackItem) -> tuple[str, str]:
        """(kind, message) for the delivery: the same text on every attempt."""
        d = item.delivery
        order = item.order.order if item.order is not None else None
        header = self.settings.header()
        if d.kind is DeliveryKind.STATUS:
            findings = item.result.findings if item.result is not None else None
            urgent = [f.code.meaning for f in findings.findings if f.urgent] if findings else []
            note = "urgent AI result" + (f": {', '.join(urgent)}" if urgent else "")
            text = build_order_status(
                control_id=d.message_id,
                at=d.created_at,
                order=order,
                study=item.study,
                note=note,
                header=header,
            )
            return "ORM^O01", text
        if item.result is None:
            raise TargetRejectedError(f"delivery {d.id} has no result to report")
        text = build_oru(
            control_id=d.message_id,
            result=item.result,
            order=order,
            study=item.study,
            header=header,
        )
        return "ORU^R01", text

    def deliver(self, item: WritebackItem) -> str:
        kind, text = self.message(item)
        try:
            ack = self.client.send(text)
        except Hl7Error:
            self.client.close()
            raise
        except OSError as exc:  # anything the client did not wrap
            self.client.close()
            raise TargetUnavailableError(f"{kind} to {self.settings.host}: {exc}") from exc
        s = self.settings
        return f"{kind} {item.delivery.message_id} acknowledged {ack.code} by {s.host}:{s.port}"

    def close(self) -> None:
        self.client.close()
