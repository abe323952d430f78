"""``hl7`` target: the result as ORU^R01 over MLLP to the RIS, and order-status updates.

Each delivery sends one message with :class:`adapters.hl7.client.MllpClient`
and waits for its ACK: ``AA`` (or ``CA``) is done; ``AE`` (or ``CE``, the
RIS could not take it now), no ACK within ``timeout`` or no connection make
the delivery retry with the write-back backoff (the client itself tries once
per delivery attempt), and dead after the target's ``retries``; ``AR`` (or
``CR``: the RIS refuses the message itself) makes it dead at once, since the
same message would be refused again. The message control ID (MSH-10) is the
delivery's ``message_id``, fixed when the delivery was made, and the message
is built from stored data only: a retry sends the same message, which the
RIS can recognise as a duplicate.

- ``result`` deliveries: ORU^R01 (:func:`adapters.hl7.oru.build_oru`);
- ``status`` deliveries (urgent results, ``notifications.ris_status``):
  ORM^O01 with ORC-1 SC and priority S (:func:`adapters.hl7.oru.build_order_status`);
  a modality's procedure step (``ris_status.procedure_steps``): ORC-5 IP, CM or DC.
- ``correction`` deliveries: the ORU again with result status ``C`` (a patient change)
  or ``withdraw_status`` (``X`` or ``D``: a rejection, a cancelled order).

Settings (``targets.NAME``): ``host``, ``port``; optional ``timeout`` (s to
wait for the ACK, default 10), ``application``/``facility`` (MSH-3/4,
default RADBRIDGE), ``receiving_application``/``receiving_facility``
(MSH-5/6), ``charset`` (MSH-18, default ``UNICODE UTF-8``), ``withdraw_status``
(``X`` or ``D``, default ``X``); ``render: [pdf]``
(and ``language``) embeds the result's summary PDF in the ORU (OBX type ED;
:mod:`adapters.writeback.rendering`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from adapters.hl7.client import MllpClient
from adapters.hl7.oru import CHARSETS, Header, build_charge, build_order_status, build_oru
from adapters.results.render.settings import Rendering, RenderSettings
from adapters.writeback.base import TargetRejectedError, TargetUnavailableError
from adapters.writeback.rendering import summary_pdf_for
from broker.model.completion import procedure_step_status
from broker.model.errors import Hl7Error, Hl7RejectedError
from broker.model.reconciliation import provenance_text
from broker.model.target import TargetSettings, WritebackTarget
from broker.model.writeback import DeliveryKind, WritebackItem
from config.base import Port, Timeout

#: Acknowledgment codes that refuse the message itself (HL7 v2 table 0008).
REFUSED = frozenset({"AR", "CR"})
Hl7Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^|^~\\&\r\n]+$")]


class Hl7TargetSettings(RenderSettings, TargetSettings):
    """``targets.NAME`` for ``type: hl7`` (see the module docstring)."""

    type: Literal["hl7"] = "hl7"
    host: str = Field(min_length=1)
    port: Port
    timeout: Timeout = 10.0
    """Seconds to wait for the connection and for the ACK."""
    application: Hl7Name = "RADBRIDGE"
    """MSH-3, radbridge's name."""
    facility: Hl7Name = "RADBRIDGE"
    """MSH-4."""
    receiving_application: Hl7Name | None = None
    """MSH-5, the RIS's name."""
    receiving_facility: Hl7Name | None = None
    """MSH-6."""
    charset: str = "UNICODE UTF-8"
    """MSH-18; ``UNICODE UTF-8``, ``8859/1``, ``GB 18030-2000`` or ``ASCII``."""
    withdraw_status: Literal["X", "D"] = "X"
    """OBR-25 and OBX-11 of an ORU that withdraws a result (a rejection, a cancelled order):
    ``X`` (results cannot be obtained, order cancelled) or ``D`` (delete), as the RIS expects."""

    takes_order_status: ClassVar[bool] = True
    can_render: ClassVar[frozenset[Rendering]] = frozenset({Rendering.PDF})

    @field_validator("charset")
    @classmethod
    def _charset(cls, value: str) -> str:
        if value not in CHARSETS:
            raise ValueError(
                f"unsupported MSH-18 character set {value!r}; valid: {', '.join(CHARSETS)}"
            )
        return value

    def build(self, name: str) -> Hl7Target:
        return Hl7Target(name, self)

    def endpoint(self) -> tuple[str, int] | None:
        return self.host, self.port

    def header(self) -> Header:
        return Header(
            application=self.application,
            facility=self.facility,
            receiving_application=self.receiving_application or "",
            receiving_facility=self.receiving_facility or "",
            charset=self.charset,
        )


class Hl7Target(WritebackTarget):
    """ORU^R01 (and ORM^O01 status updates, DFT^P03 charges) to one RIS or HIS over MLLP.
    One sending thread."""

    retryable: tuple[type[Exception], ...] = (Hl7Error, TargetUnavailableError)

    def __init__(self, name: str, settings: Hl7TargetSettings) -> None:
        self.name = name
        self.settings = settings
        self.client = MllpClient(
            settings.host,
            settings.port,
            timeout=settings.timeout,
            attempts=1,
            default_charset=CHARSETS[settings.charset],
        )

    def __repr__(self) -> str:
        return f"Hl7Target({self.name!r}, {self.settings.host}:{self.settings.port})"

    def message(self, item: WritebackItem) -> tuple[str, str]:
        """(kind, message) for the delivery: the same text on every attempt."""
        d = item.delivery
        order = item.order.order if item.order is not None else None
        header = self.settings.header()
        step = procedure_step_status(d.event) if d.kind is DeliveryKind.STATUS else None
        if step is not None:
            code, status = step
            text = build_order_status(
                control_id=d.message_id,
                at=d.created_at,
                order=order,
                study=item.study,
                note=f"modality performed procedure step {status}",
                header=header,
                status=code,
                priority="",
            )
            return "ORM^O01", text
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
        if d.kind is DeliveryKind.CHARGE:
            if item.charge is None:
                raise TargetRejectedError(f"delivery {d.id}: the use it charges is not counted")
            text = build_charge(
                control_id=d.message_id,
                at=d.created_at,
                charge=item.charge,
                order=order,
                study=item.study,
                header=header,
            )
            return "DFT^P03", text
        if item.result is None:
            raise TargetRejectedError(f"delivery {d.id} has no result to report")
        provenance: list[tuple[str, str]] = []
        if d.event == "combined" and item.findings is not None:
            provenance = [
                (
                    " ".join(
                        x
                        for x in (f.provenance.maker, f.provenance.product, f.provenance.version)
                        if x
                    ),
                    provenance_text(f),
                )
                for f in item.findings.live()
            ]
        text = build_oru(
            control_id=d.message_id,
            result=item.result,
            order=order,
            study=item.study,
            header=header,
            pdf=summary_pdf_for(item, self.settings),
            note=item.note,
            provenance=provenance,
            regulatory=item.regulatory,
        )
        return "ORU^R01", text

    def correction(self, item: WritebackItem) -> str:
        """The ORU of a correction delivery: the result again, with OBR-25 and OBX-11 ``C``
        (corrected: under the patient and order radbridge holds now) or the withdrawal code,
        and an NTE saying why. Its own control ID (MSH-10), fixed like any delivery's."""
        d, why = item.delivery, item.correction
        if item.result is None or why is None:
            raise TargetRejectedError(f"delivery {d.id} has no result or correction to send")
        status = self.settings.withdraw_status if why.cause.withdraws else "C"
        verb = "withdrawn" if why.cause.withdraws else "corrected"
        note = f"AI result {verb}: {why.reason.meaning} ({why.cause.value})"
        if item.original is not None:
            note += f"; replaces message {item.original.message_id}"
        return build_oru(
            control_id=d.message_id,
            result=item.result,
            order=item.order.order if item.order is not None else None,
            study=item.study,
            header=self.settings.header(),
            note=note,
            regulatory=item.regulatory,
            status=status,
        )

    def correct(self, item: WritebackItem) -> str:
        return self._send(item, "ORU^R01", self.correction(item))

    def deliver(self, item: WritebackItem) -> str:
        kind, text = self.message(item)
        return self._send(item, kind, text)

    def _send(self, item: WritebackItem, kind: str, text: str) -> str:
        try:
            ack = self.client.send(text)
        except Hl7RejectedError as exc:
            self.client.close()
            if exc.code in REFUSED:
                raise TargetRejectedError(
                    f"{kind} {item.delivery.message_id} refused by {self.settings.host}: {exc}"
                ) from exc
            raise
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
