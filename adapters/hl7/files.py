"""HL7 v2 orders read from a file (``radbridge routes explain FILES --order FILE``).

The file holds one ORM^O01 or OMI^O23 message as a RIS sends it, with or
without MLLP framing, segments ending in CR or a newline. It is parsed and
mapped by the same code as a message received over MLLP.
"""

from __future__ import annotations

from adapters.hl7.mapping import OrderEvent, event_from_message
from adapters.hl7.parse import parse, read_header
from broker.model.domain import Order
from broker.model.errors import Hl7Error

_MLLP = b"\x0b\x1c"


def orders_from_file(raw: bytes, default_charset: str = "utf-8") -> tuple[Order, ...]:
    """The orders of the message in ``raw``: one per OBR; ``Hl7Error`` naming the problem."""
    body = raw.strip().strip(_MLLP).strip()
    header = read_header(body, default_charset)
    event = event_from_message(parse(body, header))
    if not isinstance(event, OrderEvent):
        raise Hl7Error(f"the message is {header.kind}, not an order; valid: ORM^O01 or OMI^O23")
    return event.orders
