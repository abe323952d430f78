"""HL7 v2 messages for tests and benchmarks (builders in :mod:`adapters.harness.hl7_messages`).

Re-exported here so that tests keep importing ``from tests.hl7_messages import …``.
"""

from __future__ import annotations

from adapters.harness.hl7_messages import (
    ESCAPE,
    PRIORITY_CODES,
    STATUS_CODES,
    adt,
    adt_a40,
    esc,
    msh,
    omi_o23,
    orm_o01,
    pid,
    sample_order,
    segment,
)

__all__ = [
    "ESCAPE",
    "PRIORITY_CODES",
    "STATUS_CODES",
    "adt",
    "adt_a40",
    "esc",
    "msh",
    "omi_o23",
    "orm_o01",
    "pid",
    "sample_order",
    "segment",
]
