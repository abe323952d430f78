"""DICOM UIDs from outside: one rule for every edge that takes them in.

A UID (PS3.5 9.1) is at most 64 characters of digits and dots, its components
without leading zeros (``0`` alone is a component); the pattern is pydicom's
:data:`~pydicom.uid.RE_VALID_UID`. A Study, Series or SOP Instance UID that is
not one (``../../x``, ``1.2..3``, ``1.02``, 65 characters) is refused where it
enters (C-STORE, STOW-RS, JSON findings, FHIR and HL7 orders): an object stored
under it could never be asked for by DICOMweb, whose paths take only UIDs.
"""

from __future__ import annotations

from pydicom.uid import RE_VALID_UID

from broker.model.errors import InvalidDicomError

#: Longest UID (PS3.5 9.1).
MAX_UID_LENGTH = 64
#: The pattern of a valid UID (length aside), for validators that take a pattern.
UID_PATTERN = RE_VALID_UID.pattern
#: What a valid UID looks like, for messages that say what would have been valid.
VALID_UID = (
    "digits and dots, at most 64 characters, no empty component and no leading zero "
    "in one, e.g. 1.2.840.113619.2.55.3"
)


def uid_problem(value: str) -> str | None:
    """What makes ``value`` no DICOM UID, in a few words that do not quote it (the first
    64 characters of a refusal go back in a C-STORE's Error Comment); None for a UID."""
    if not value:
        return "empty"
    if len(value) > MAX_UID_LENGTH:
        return f"{len(value)} characters"
    if RE_VALID_UID.match(value):
        return None
    if value.strip("0123456789."):
        return "not only digits and dots"
    if any(not part for part in value.split(".")):
        return "empty component"
    return "leading zero in a component"


def checked_uid(keyword: str, value: str) -> str:
    """``value``, or :class:`InvalidDicomError` naming ``keyword`` when it is no DICOM UID."""
    problem = uid_problem(value)
    if problem is not None:
        raise InvalidDicomError(f"{keyword} is not a valid UID: {problem}; valid: {VALID_UID}")
    return value


__all__ = ["MAX_UID_LENGTH", "UID_PATTERN", "VALID_UID", "checked_uid", "uid_problem"]
