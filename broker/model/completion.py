"""When a study is complete, and why: evidence from the modality and the PACS.

A study is complete when its images say so before silence does: a Modality
Performed Procedure Step that is COMPLETED or DISCONTINUED with every instance
it references arrived, an Instance Availability Notification whose instances
have all arrived, the series a route expects all in, or (the fallback) the
quiet time without a new instance. :class:`Completion` names which one decided
it; the study's history keeps it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime


class Completion(enum.StrEnum):
    """What decided that a study is complete."""

    MPPS = "mpps"
    """The modality's performed procedure step is COMPLETED or DISCONTINUED, and every
    instance it references has arrived."""
    IAN = "ian"
    """A PACS's Instance Availability Notification: every instance it lists has arrived."""
    EXPECTED_SERIES = "expected_series"
    """Every series a route expects is in."""
    DEADLINE = "deadline"
    """The expected series were not all in by the route's deadline (named in the history)."""
    QUIET = "quiet"
    """No new instance for the study's quiet time (``stable_seconds``): the fallback."""


class NoticeKind(enum.StrEnum):
    """A DIMSE-N notice about a study's instances."""

    MPPS = "mpps"
    IAN = "ian"


class StepStatus(enum.StrEnum):
    """Performed Procedure Step Status (0040,0252) of an MPPS."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


#: The statuses after which an MPPS may no longer change.
FINAL_STEPS = frozenset({StepStatus.COMPLETED, StepStatus.DISCONTINUED})


@dataclass(frozen=True, slots=True)
class ProcedureNotice:
    """One MPPS or IAN as stored: the study it names and the instances it references."""

    id: int
    kind: NoticeKind
    sop_instance_uid: str
    study_uid: str | None
    accession_number: str | None
    order_id: int | None
    status: str
    """The MPPS's step status (:class:`StepStatus`); ``AVAILABLE`` for an IAN."""
    referenced: tuple[str, ...]
    """SOP Instance UIDs of the instances the notice lists."""
    calling_ae: str
    created_at: datetime
    updated_at: datetime


#: The status an IAN is stored with.
IAN_AVAILABLE = "AVAILABLE"


def notice_evidence(
    notices: Sequence[ProcedureNotice], present: Collection[str]
) -> tuple[Completion, str] | None:
    """Whether the study's notices say it is complete, and how (for its history).

    MPPS: every step of the study is COMPLETED or DISCONTINUED, and every instance
    they reference is ``present`` (a COMPLETED step that references nothing proves
    nothing). Else IAN: every instance the study's notifications list is present.
    """
    steps = [n for n in notices if n.kind is NoticeKind.MPPS]
    if steps and all(n.status in FINAL_STEPS for n in steps):
        wanted = {uid for n in steps for uid in n.referenced}
        discontinued = any(n.status == StepStatus.DISCONTINUED for n in steps)
        if (wanted or discontinued) and wanted.issubset(present):
            statuses = "/".join(sorted({n.status for n in steps}))
            return Completion.MPPS, (
                f"{len(steps)} performed procedure step(s) {statuses}; "
                f"all {len(wanted)} referenced instances arrived"
            )
    availability = [n for n in notices if n.kind is NoticeKind.IAN]
    listed = {uid for n in availability for uid in n.referenced}
    if listed and listed.issubset(present):
        return Completion.IAN, (
            f"{len(availability)} instance availability notification(s); "
            f"all {len(listed)} listed instances arrived"
        )
    return None


#: HL7 v2 order status (table 0038) of each MPPS status, for the RIS.
ORDER_STATUS = {
    StepStatus.IN_PROGRESS: "IP",
    StepStatus.COMPLETED: "CM",
    StepStatus.DISCONTINUED: "DC",
}
STEP_EVENT = "mpps"


def procedure_step_event(notice: ProcedureNotice) -> str:
    """The delivery event forwarding one status of one MPPS to the RIS: ``mpps:ID:CM``."""
    return f"{STEP_EVENT}:{notice.id}:{ORDER_STATUS[StepStatus(notice.status)]}"


def procedure_step_notice(event: str) -> int | None:
    """The notice id of a procedure-step delivery event; None for any other event."""
    parts = event.split(":")
    if len(parts) != 3 or parts[0] != STEP_EVENT or not parts[1].isdigit():
        return None
    return int(parts[1])


def procedure_step_status(event: str) -> tuple[str, str] | None:
    """(HL7 order status, MPPS status) of a delivery event made by
    :func:`procedure_step_event`; None for any other event."""
    parts = event.split(":")
    if len(parts) != 3 or parts[0] != STEP_EVENT:
        return None
    for step, code in ORDER_STATUS.items():
        if code == parts[2]:
            return code, step.value
    return None
