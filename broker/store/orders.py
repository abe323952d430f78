"""Orders in the store: record what the RIS sends, correlate orders with studies.

``record_order`` keeps the message verbatim and the normalized order in one
transaction (the HL7 and FHIR edges acknowledge only after it returns), then
links the order to its studies: by accession number (and its issuer when both
sides have one), otherwise by study instance UID. A patient-ID mismatch is
flagged for an operator, never linked. A cancelled order cancels its studies'
unfinished jobs; a new link asks routing to decide the study again.
"""

from __future__ import annotations

from sqlalchemy import Engine

from broker.domain import (
    InboundMessage,
    Order,
    OrderLink,
    OrderOutcome,
    Patient,
    StoredOrder,
    Study,
)


class OrderStore:
    """Orders, their raw messages, patients (ADT) and order ↔ study links."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_order(
        self, order: Order, message: InboundMessage, *, resource_id: str | None = None
    ) -> OrderOutcome:
        """Store ``message`` verbatim and create or update its order, in one transaction.

        With ``resource_id`` (FHIR PUT) that order is updated, or created with
        that id. Otherwise the order is matched by placer number, then filler
        number, then accession number + issuer; a new one gets a fresh
        ``resource_id``.
        """
        raise NotImplementedError

    def record_patient(self, patient: Patient, message: InboundMessage) -> int:
        """ADT A01/A04/A08: register or update a patient; returns studies + orders updated."""
        raise NotImplementedError

    def merge_patients(self, surviving: Patient, prior: Patient, message: InboundMessage) -> int:
        """ADT A40: move the prior patient's studies and orders to the survivor; returns moved."""
        raise NotImplementedError

    def record_message(self, message: InboundMessage, *, error: str) -> int:
        """Keep a message that could not be used (answered AE), with why; returns its id."""
        raise NotImplementedError

    def get(self, key: str | int) -> StoredOrder:
        """By numeric id, resource id or accession number; ``NotFoundError`` if none."""
        raise NotImplementedError

    def find(
        self,
        *,
        accession_number: str | None = None,
        issuer: str | None = None,
        placer_number: str | None = None,
        filler_number: str | None = None,
    ) -> list[StoredOrder]:
        """Orders whose identifiers match every one given."""
        raise NotImplementedError

    def list(self, limit: int = 100, offset: int = 0) -> list[StoredOrder]:
        """Newest first (by last update)."""
        raise NotImplementedError

    def raw_messages(self, order_id: int) -> list[InboundMessage]:
        """The messages that made this order, oldest first."""
        raise NotImplementedError

    def order_for_study(self, study: Study) -> tuple[StoredOrder | None, OrderLink | None]:
        """The study's linked order, correlating (and recording the link) if not done yet.

        Returns ``(None, link)`` when an order matched but is flagged.
        """
        raise NotImplementedError
