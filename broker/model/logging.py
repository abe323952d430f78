"""Logging: structlog with bound context, PHI redaction, console or JSON output.

The standard library's loggers (pynetdicom, SQLAlchemy, alembic) go through the
same processor chain, so every line — ours or a library's — is redacted and
formatted the same way.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from concurrent_log_handler import ConcurrentRotatingFileHandler, ConcurrentTimedRotatingFileHandler
from structlog.typing import EventDict, Processor, WrappedLogger

#: Keys whose values identify a patient; redacted unless PHI logging is on.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "birth_date",
        "patient",
        "other_patient_ids",
        "patient_address",
        "study_value",
    }
)
"""``study_value``: a value read from a study (e.g. the actual value of a failed ``tag.*``
condition), which may be any attribute, identifying ones included."""
#: Keys whose values are UIDs or accession numbers; shortened to a stable hash.
PSEUDONYMIZED_KEYS = frozenset({"study_uid", "accession_number", "series_uid", "sop_instance_uid"})


#: A DICOM UID inside any text (an error message, a library's line): five components or
#: more, or a UUID-derived ``2.25.…`` (so that versions and IPv4 addresses are left alone);
#: not the standard's own (``1.2.840.10008.…``: SOP classes, transfer syntaxes).
UID_IN_TEXT = re.compile(
    r"(?<![\w.])(?!1\.2\.840\.10008\.)"
    r"(?:[0-2](?:\.(?:0|[1-9][0-9]*)){4,}|2\.25\.[0-9]{10,})(?![\w.])"
)


def pseudonym(value: str) -> str:
    """A short stable stand-in for an identifier, so log lines still correlate."""
    return "h:" + hashlib.sha256(value.encode()).hexdigest()[:12]


class RedactPHI:
    """Processor: remove patient identifiers and hash study identifiers.

    A traceback keeps its frames but not the exceptions' messages, which may quote
    what was received (a value pydicom could not decode, a statement's row); a UID
    in any other text (an error message, a library's line) is hashed too.
    """

    def __init__(self, phi: bool) -> None:
        self.phi = phi

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        if self.phi:
            return event_dict
        for key in list(event_dict):
            if key in PHI_KEYS:
                event_dict[key] = "[redacted]"
            elif key in PSEUDONYMIZED_KEYS and isinstance(event_dict[key], str):
                event_dict[key] = pseudonym(event_dict[key])
            elif isinstance(event_dict[key], str) and UID_IN_TEXT.search(event_dict[key]):
                event_dict[key] = UID_IN_TEXT.sub(lambda m: pseudonym(m[0]), event_dict[key])
        exc_info = event_dict.pop("exc_info", None)
        if exc_info:
            exc = _exception(exc_info)
            if exc is not None:
                event_dict["exception"] = traceback_without_messages(exc)
        return event_dict


def _exception(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1] if len(exc_info) > 1 else None
    return sys.exc_info()[1]


def traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` and of the exceptions it was raised from or during, with
    their types and frames but not their messages."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 8:
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        kind = type(current)
        parts.append(
            f"Traceback (most recent call last):\n{frames}{kind.__module__}.{kind.__qualname__}: "
            "(message not logged: logging.phi is off)"
        )
        current = current.__cause__ or current.__context__
    return "\n\nThe above exception led to the following one:\n\n".join(reversed(parts))


#: Libraries whose lines below a level are dropped: pynetdicom's and highdicom's INFO lines
#: quote the UIDs of what they handle.
_QUIET_LIBRARIES = {
    "pynetdicom": logging.WARNING,
    "alembic": logging.WARNING,
    "highdicom": logging.WARNING,
}


@dataclass(frozen=True, slots=True)
class LogFile:
    """A log file rotated by size and age, which several processes may write at once."""

    path: Path
    max_bytes: int
    backups: int
    rotate_every: float | None
    """Seconds between rotations by age (None: by size only)."""

    def handler(self) -> logging.Handler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.rotate_every is None:
            return ConcurrentRotatingFileHandler(
                str(self.path), maxBytes=self.max_bytes, backupCount=self.backups
            )
        return ConcurrentTimedRotatingFileHandler(
            str(self.path),
            when="s",
            interval=max(1, int(self.rotate_every)),
            backupCount=self.backups,
            maxBytes=self.max_bytes,
            utc=True,
        )


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    phi: bool = False,
    stream: Any = None,
    *,
    file: LogFile | None = None,
) -> None:
    """Set up structlog and the standard library's logging for this process: lines go to
    ``stream`` (standard error by default), or to ``file`` when given."""
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and (file is not None or not stream.isatty()))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        RedactPHI(phi),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=file is None and stream.isatty())
    )
    structlog.configure(
        # A line below the level is dropped before any processor runs (a C-STORE's line
        # costs nothing when the level is WARNING).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # ExtraAdder: a library's ``extra={...}`` fields reach the redactor and the output.
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json_output else _identity,
            renderer,
        ],
    )
    handler = file.handler() if file is not None else logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, floor in _QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level)))


def _identity(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    return event_dict


def get_logger(name: str, **context: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger.bind(**context) if context else logger


def bind_context(**context: Any) -> Mapping[str, Any]:
    """Bind context (association id, calling AE, study) to every line of this thread."""
    return structlog.contextvars.bind_contextvars(**context)
