"""The one exception hierarchy of radbridge.

Every error radbridge raises on purpose derives from :class:`RadbridgeError`
and is raised ``from`` the library error it wraps, so the cause stays visible.
A name that is not known ends its message the same way everywhere:
:func:`did_you_mean`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RadbridgeError(Exception):
    """Root of every error radbridge raises on purpose."""


class ConfigError(RadbridgeError):
    """The configuration cannot be loaded or is invalid.

    ``problems`` holds one human-readable line per problem, each starting
    with ``FILE:LINE`` where the line is known.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message if problems is None else "\n".join(problems))


class StoreError(RadbridgeError):
    """The store (database) failed or holds something unexpected."""


class NotFoundError(StoreError):
    """A record that was asked for does not exist."""


class DuplicateError(StoreError):
    """A record with the same key is held already (a second N-CREATE of one SOP instance)."""


class SpoolError(RadbridgeError):
    """The spool could not durably write or read an object."""


class AdapterError(RadbridgeError):
    """An edge adapter could not translate or carry a message."""


class DicomError(AdapterError):
    """A DICOM object or association could not be handled."""


class InvalidDicomError(DicomError):
    """A received DICOM object cannot be understood (C-STORE status 0xC000 class)."""


class Hl7Error(AdapterError):
    """An HL7 v2 message or MLLP connection could not be handled."""


class Hl7RejectedError(Hl7Error):
    """The receiver answered an HL7 message with AE/AR (or CE/CR): it did not take it.

    ``code`` is MSA-1, ``text`` what the receiver said (ERR / MSA-3). AE and
    CE mean "try again later"; AR and CR mean the message itself was refused.
    """

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"the receiver answered {code}: {text or 'no reason given'}")


class RoutingError(RadbridgeError):
    """A routing rule is invalid or cannot be evaluated."""


class VendorError(RadbridgeError):
    """Delivery to an AI vendor failed."""


class DeidentificationError(VendorError):
    """A study cannot be de-identified as its profile says (not retried: the same input
    fails the same way)."""


class ResultError(AdapterError):
    """A vendor's result cannot be understood or turned into a DICOM object.

    ``problems`` holds one line per problem, each starting with the field it is
    about (``findings[0].score: …``).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message if problems is None else "; ".join(problems))


class CorrectionUnsupportedError(AdapterError):
    """A write-back target cannot withdraw or correct what it wrote (never retried)."""


def did_you_mean(word: str, valid: Iterable[str], *, or_list: bool = False) -> str:
    """What a "no such …" message ends with: ``; did you mean 'x'?`` for the closest valid
    word (any case), else ``; valid: a, b`` with ``or_list``, else nothing.

    ``f"no such vendor transport '{name}'{did_you_mean(name, names)}"`` reads
    "no such vendor transport 'dicomweb2'; did you mean 'dicomweb'?".
    """
    words = sorted(set(valid))
    close = {w.lower(): w for w in words}.get(word.lower()) or next(
        iter(difflib.get_close_matches(word, words, n=1)), None
    )
    if close is not None:
        return f"; did you mean '{close}'?"
    return f"; valid: {', '.join(words)}" if or_list and words else ""
