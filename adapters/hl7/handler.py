"""One HL7 message in, stored, its acknowledgment out (the listener's intervention hook).

- The message maps to orders or a patient event and the store took it: ``AA``.
- It was read but cannot be used (no accession number, unsupported event,
  unknown order control…): kept with why, ``AE`` with an ERR naming the
  problem.
- It cannot be read (no MSH, broken encoding characters, bytes not valid in
  its character set, larger than the limit): ``AR``; the bytes are still kept
  when possible.
- The store failed: ``AE`` saying storage failed, so that the sender tries
  again; never ``AA``.
- It would move an order, an accession number or a patient's records to
  another patient (:class:`~broker.model.identity.IdentityConflictError`):
  ``AE`` with an ERR naming the field (205 duplicate key identifier at PID-3 for
  an order of another patient, 204 unknown key identifier at MRG-1 for a merge of
  an unknown patient…); nothing was applied, the message and the conflict are
  kept for an operator (``radbridge conflicts list``).

The store is called synchronously: the listener runs :meth:`MessageHandler.handle`
on its single store thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from adapters.hl7.ack import AckCode, ErrorCode, Problem, build_ack, reply_code
from adapters.hl7.mapping import (
    MergeEvent,
    OrderEvent,
    PatientEvent,
    UnusableMessageError,
    event_from_message,
)
from adapters.hl7.parse import Header, Hl7Message, Hl7ParseError, parse, read_header
from adapters.hl7.reports import REPORT_EVENTS, report_from_message
from broker.model.domain import InboundMessage, Order, OrderOutcome, OrderSource, Patient
from broker.model.identity import ConflictKind, ConflictReason, IdentityConflictError
from broker.model.logging import get_logger
from broker.model.reports import FinalReport
from broker.model.sites import SiteDirectory

LOG = get_logger("radbridge.hl7")


class OrderSink(Protocol):
    """What the handler needs of the store (:class:`broker.store.orders.OrderStore` has it)."""

    def record_orders(
        self, orders_: Sequence[tuple[Order, str | None]], message: InboundMessage
    ) -> list[OrderOutcome]: ...

    def record_patient(self, patient: Patient, message: InboundMessage) -> int: ...

    def merge_all(
        self, merges: Sequence[tuple[Patient, Patient]], message: InboundMessage
    ) -> int: ...

    def record_message(self, message: InboundMessage, *, error: str) -> int: ...


class ReportSink(Protocol):
    """Where final reports go (:class:`broker.runtime.reports.FinalReportIntake` has it)."""

    def record_report(self, report: FinalReport, message: InboundMessage) -> str | None:
        """Store the report verbatim and compare it; a problem to answer AE with, or None."""
        ...


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one message: the outcome, why, and the bytes to answer (None: no answer)."""

    outcome: AckCode
    reply: bytes | None
    kind: str
    control_id: str
    problem: Problem | None = None


class MessageHandler:
    """Parse, map, store and acknowledge HL7 messages for one listener."""

    def __init__(
        self,
        sink: OrderSink,
        *,
        application: str,
        facility: str,
        default_charset: str,
        reports: ReportSink | None = None,
        sites: Callable[[], SiteDirectory] = SiteDirectory,
    ) -> None:
        self.sink = sink
        self.sites = sites
        """The sites in force: an order is the site's whose ``hl7_facility`` is its MSH-4."""
        self.reports = reports
        self.application = application
        self.facility = facility
        self.default_charset = default_charset

    def handle(self, raw: bytes, peer: str) -> Handled:
        """Store ``raw`` (one MLLP frame's payload) and build its acknowledgment."""
        try:
            header = read_header(raw, self.default_charset)
        except Hl7ParseError as exc:
            problem = Problem(ErrorCode.SEGMENT_SEQUENCE_ERROR, str(exc), "MSH")
            return self._reject(raw, None, problem, peer)
        try:
            message = parse(raw, header)
        except Hl7ParseError as exc:
            code = ErrorCode.DATA_TYPE_ERROR if header.codec else ErrorCode.TABLE_VALUE_NOT_FOUND
            field = None if header.codec else 18
            return self._reject(raw, header, Problem(code, str(exc), "MSH", 1, field), peer)
        inbound = InboundMessage(
            source=OrderSource.HL7,
            kind=header.kind[:32] or "?",
            raw=raw,
            peer=peer,
            control_id=header.control_id[:64] or None,
            sender=f"hl7:{header.sending_application_raw}^{header.sending_facility_raw}"[:160],
        )
        facility = header.sending_facility_raw.split("^", 1)[0].strip()
        sites = self.sites()
        if sites.unknown_facility(facility):
            return self._unknown_facility(facility, inbound, header, peer)
        site = sites.for_facility(facility)
        if self.reports is not None and header.kind in REPORT_EVENTS:
            return self._report(message, header, inbound, peer)
        try:
            event = event_from_message(message)
        except UnusableMessageError as exc:
            return self._unusable(exc, inbound, header, peer)
        if sites and site is None and facility not in sites.hub_facilities:
            LOG.warning(
                "HL7 message from a facility of no site taken as the hub's",
                facility=facility,
                kind=header.kind,
                control_id=header.control_id,
            )
        try:
            self._store(event, inbound, sites, site)
        except IdentityConflictError as exc:
            claimed = exc.report.claimed.patient_id  # redacted unless logging.phi is on
            return self._answer(header, AckCode.AE, identity_problem(exc), peer, claimed)
        except Exception as exc:
            return self._answer(header, AckCode.AE, self._storage_failed(exc, header), peer)
        return self._answer(header, AckCode.AA, None, peer)

    def _unusable(
        self, exc: UnusableMessageError, inbound: InboundMessage, header: Header, peer: str
    ) -> Handled:
        """AE for a message that parsed but cannot be used; the message is kept with why."""
        problem = exc.problem
        try:
            self.sink.record_message(inbound, error=problem.text)
        except Exception as store_exc:
            problem = self._storage_failed(store_exc, header)
        return self._answer(header, AckCode.AE, problem, peer)

    def _unknown_facility(
        self, facility: str, inbound: InboundMessage, header: Header, peer: str
    ) -> Handled:
        """AR for a message whose MSH-4 names no site (``hl7.unknown_facility: refuse``);
        kept with why, nothing applied."""
        text = (
            f"sending facility (MSH-4) '{facility}' is no site's hl7_facility; valid: a "
            "configured site's hl7_facility or one of hl7.hub_facilities"
        )
        problem = Problem(ErrorCode.TABLE_VALUE_NOT_FOUND, text, "MSH", 1, 4)
        try:
            self.sink.record_message(inbound, error=text)
        except Exception as exc:
            return self._answer(header, AckCode.AE, self._storage_failed(exc, header), peer)
        return self._answer(header, AckCode.AR, problem, peer)

    def _report(
        self, message: Hl7Message, header: Header, inbound: InboundMessage, peer: str
    ) -> Handled:
        """A final report: stored verbatim and compared with the study's AI findings, then
        AA; AE when it names no accession number or another patient than the study's."""
        assert self.reports is not None
        try:
            report = report_from_message(message)
        except UnusableMessageError as exc:
            return self._unusable(exc, inbound, header, peer)
        try:
            refused = self.reports.record_report(report, inbound)
        except Exception as exc:
            return self._answer(header, AckCode.AE, self._storage_failed(exc, header), peer)
        if refused is not None:
            problem = Problem(ErrorCode.DUPLICATE_KEY_IDENTIFIER, refused, "PID", 1, 3)
            return self._answer(header, AckCode.AE, problem, peer)
        return self._answer(header, AckCode.AA, None, peer)

    def handle_oversized(self, head: bytes, size: int, limit: int, peer: str) -> Handled:
        """A frame larger than ``hl7.max_message_bytes``: ``AR``, answered from its head."""
        try:
            header: Header | None = read_header(head, self.default_charset)
        except Hl7ParseError:
            header = None
        text = (
            f"the message is {size} bytes, more than hl7.max_message_bytes ({limit}); "
            "it was not stored"
        )
        problem = Problem(ErrorCode.APPLICATION_INTERNAL_ERROR, text, "MSH")
        return self._answer(header, AckCode.AR, problem, peer)

    def _store(
        self,
        event: OrderEvent | PatientEvent | MergeEvent,
        inbound: InboundMessage,
        sites: SiteDirectory,
        site: str | None,
    ) -> None:
        """Store one event of ``site``'s (None: the hub's), its patients named with the
        site's issuer where they name none."""
        if isinstance(event, OrderEvent):
            orders = [
                replace(o, site=site, patient=sites.patient_of(site, o.patient))
                for o in event.orders
            ]
            outcomes = self.sink.record_orders([(o, None) for o in orders], inbound)
            for order, outcome in zip(orders, outcomes, strict=True):
                LOG.debug(
                    "order recorded",
                    order_id=outcome.stored.id,
                    created=outcome.created,
                    accession_number=order.accession_number,
                    status=order.status.value,
                )
        elif isinstance(event, PatientEvent):
            self.sink.record_patient(sites.patient_of(site, event.patient), inbound)
        else:
            merges = [
                (sites.patient_of(site, survivor), sites.patient_of(site, prior))
                for survivor, prior in event.merges
            ]
            moved = self.sink.merge_all(merges, inbound)
            LOG.info("patients merged", moved=moved, control_id=inbound.control_id)

    def _storage_failed(self, exc: Exception, header: Header) -> Problem:
        LOG.error(
            "storing an HL7 message failed; answered AE so that the sender retries",
            kind=header.kind,
            control_id=header.control_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        return Problem(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            "storage failed; the message was not stored, send it again later",
        )

    def _reject(self, raw: bytes, header: Header | None, problem: Problem, peer: str) -> Handled:
        """AR; the bytes are kept when the store takes them (a failure there changes nothing)."""
        inbound = InboundMessage(
            source=OrderSource.HL7,
            kind=(header.kind[:32] if header is not None else "") or "unreadable",
            raw=raw,
            peer=peer,
            control_id=(header.control_id[:64] or None) if header is not None else None,
        )
        try:
            self.sink.record_message(inbound, error=problem.text)
        except Exception as exc:
            LOG.warning(
                "an unreadable HL7 message could not be kept",
                error=f"{type(exc).__name__}: {exc}",
            )
        return self._answer(header, AckCode.AR, problem, peer)

    def _answer(
        self,
        header: Header | None,
        outcome: AckCode,
        problem: Problem | None,
        peer: str,
        patient_id: str | None = None,
    ) -> Handled:
        code = reply_code(header, outcome)
        kind = header.kind if header is not None else "unreadable"
        control_id = header.control_id if header is not None else ""
        if problem is not None:
            LOG.warning(
                "HL7 message not taken",
                ack=outcome.value,
                kind=kind,
                control_id=control_id,
                peer=peer,
                problem=problem.text,
                **({"patient_id": patient_id} if patient_id else {}),
            )
        reply = None
        if code is not None:
            text = build_ack(
                header, code, problem, application=self.application, facility=self.facility
            )
            codec = (header.codec if header is not None else None) or "utf-8"
            reply = text.encode(codec, errors="replace")
        return Handled(outcome, reply, kind, control_id, problem)


def identity_problem(exc: IdentityConflictError) -> Problem:
    """The ERR of a message refused for naming another patient: the condition and the field
    that names the patient (PID-3, or MRG-1 for the prior patient of a merge)."""
    report = exc.report
    code = {
        ConflictReason.UNKNOWN_PATIENT: ErrorCode.UNKNOWN_KEY_IDENTIFIER,
        ConflictReason.AMBIGUOUS_ISSUER: ErrorCode.REQUIRED_FIELD_MISSING,
    }.get(report.reason, ErrorCode.DUPLICATE_KEY_IDENTIFIER)
    segment = "MRG" if report.kind is ConflictKind.PATIENT_MERGE else "PID"
    field = 1 if segment == "MRG" else 3
    if report.reason is ConflictReason.ACROSS_ISSUERS:
        segment, field = "MRG", 1
    return Problem(code, str(exc), segment, 1, field)
