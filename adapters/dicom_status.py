"""Storage failures radbridge answers with, beside pynetdicom's ``Status``.

pynetdicom 3's ``Status`` is an ``IntEnum`` of the general codes (``SUCCESS``,
``PENDING``, ``CANCEL``, ``MOVE_DESTINATION_UNKNOWN``) and names no failure of the
storage service class; :class:`StoreFailure` names those radbridge sends, as an
``IntEnum`` of the same kind. A C-STORE answer (PS3.4 Table B.2-1: the listener,
the harness's simulated PACS and vendor) and a STOW-RS FailureReason (0008,1197;
PS3.18 Table 10.5.3-1: results from vendors) use the same codes. Success is
pynetdicom's ``Status.SUCCESS``.
"""

from __future__ import annotations

import enum


class StoreFailure(enum.IntEnum):
    """Storage failure statuses: 0xA7xx refused, 0xA9xx and 0xCxxx error."""

    OUT_OF_RESOURCES = 0xA700
    """Refused, out of resources: nothing was kept, the sender may try again."""
    DATASET_DOES_NOT_MATCH = 0xA900
    """Error, the data set does not match (STOW-RS: not of the study in the URL)."""
    CANNOT_UNDERSTAND = 0xC000
    """Error, cannot understand: not DICOM, or without what radbridge needs, or a Study,
    Series or SOP Instance UID that is not a valid UID (the Error Comment names it)."""
    IDENTITY_CONFLICT = 0xC409
    """Error (cannot understand class): the object names another patient than the study
    radbridge holds under its Study Instance UID, or its SOP Instance UID (Series Instance
    UID) is held in another study, or a result is of another patient or study than its
    job's. Nothing was kept and what radbridge holds is unchanged; the conflict is listed
    for an operator (``radbridge conflicts list``). Resending the same object gets the same
    answer."""
