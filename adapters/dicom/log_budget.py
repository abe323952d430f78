"""At most a few warning-or-worse lines of pynetdicom (and pydicom) per connection.

radbridge's PDU reader (:mod:`adapters.dicom.reactor`) ends a connection at its
first protocol error with one line, but pynetdicom logs on its own as well,
and a peer must not be able to write thousands of lines through one
connection. :class:`ProtocolLogBudget` lets the first
:data:`PROTOCOL_LOG_BUDGET` of pynetdicom's warnings and errors of a
connection through and counts the rest; the connection's last line says how
many were dropped (:func:`report_suppressed`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from broker.model.logging import get_logger

LOG = get_logger("radbridge.dicom")
#: pynetdicom warnings and errors logged per connection; the rest are counted.
PROTOCOL_LOG_BUDGET = 5
_USED = "_radbridge_protocol_lines"
#: The loggers whose lines count: pynetdicom's, and pydicom's (a warning for each
#: invalid value it reads, several per data set with an invalid UID).
_BUDGETED = ("pynetdicom", "pydicom")


def _connection(thread: threading.Thread) -> Any:
    if isinstance(thread, Association):
        return thread
    if isinstance(thread, DULServiceProvider):
        return thread.assoc
    return None


class ProtocolLogBudget(logging.Filter):
    """A handler filter: pynetdicom's lines of one connection past the budget are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(_BUDGETED):
            return True
        connection = _connection(threading.current_thread())
        if connection is None:
            return True
        used = int(getattr(connection, _USED, 0)) + 1
        setattr(connection, _USED, used)
        return used <= PROTOCOL_LOG_BUDGET


def report_suppressed(assoc: Association) -> None:
    """At the end of a connection: one line saying how many lines were dropped, if any."""
    dropped = int(getattr(assoc, _USED, 0)) - PROTOCOL_LOG_BUDGET
    if dropped > 0:
        LOG.warning(
            "protocol log lines suppressed",
            association_id=getattr(assoc, "radbridge_id", None),
            peer=assoc.requestor.address,
            suppressed=dropped,
        )


def install() -> None:
    """Put the budget on every handler of the root logger (this process's output)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ProtocolLogBudget) for f in handler.filters):
            handler.addFilter(ProtocolLogBudget())


__all__ = ["PROTOCOL_LOG_BUDGET", "ProtocolLogBudget", "install", "report_suppressed"]
