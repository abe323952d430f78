"""HL7 v2 orders and patients to the domain model (IHE Scheduled Workflow field map).

=====================  ===================  ===================
domain                 ORM^O01 (v2.3.1)     OMI^O23 (v2.5.1)
=====================  ===================  ===================
accession_number       OBR-18               IPC-1 (else OBR-18)
issuer                 —                    IPC-1.2 (else .3)
study_uid              ZDS-1                IPC-3 (else ZDS-1)
requested_procedure_id OBR-19               IPC-2 (else OBR-19)
procedure_code / text  OBR-44, else OBR-4   OBR-44, else OBR-4
modality               OBR-24               IPC-5 (else OBR-24)
priority               ORC-7.6, OBR-27.6    TQ1-9, else ORC-7.6
placer / filler        ORC-2 / ORC-3 (else OBR-2 / OBR-3)
department             ORC-17, else PV1-3 (point of care)
status                 ORC-1 and ORC-5 (see :data:`ORDER_CONTROL`)
patient                PID-3 (the MR repetition, else the first; issuer CX-4),
                       PID-5, PID-7, PID-8
=====================  ===================  ===================

One order is made per OBR (an ORC without OBR, e.g. a bare cancel, makes one
from the ORC alone). ADT^A01/A04/A08 register or update the PID's patient;
ADT^A40 merges each MRG's prior patient into the PID before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.dicom_uid import VALID_UID, uid_problem
from adapters.hl7.ack import ErrorCode, Problem
from adapters.hl7.parse import Hl7Message, Segment
from broker.model.domain import Order, OrderPriority, OrderSource, OrderStatus, Patient
from broker.model.errors import Hl7Error

SUPPORTED_EVENTS = ("ORM^O01", "OMI^O23", "ADT^A01", "ADT^A04", "ADT^A08", "ADT^A40")
SUPPORTED_VERSIONS = ((2, 1), (2, 8, 2))
"""The oldest and newest MSH-12 accepted."""

#: ORC-1 order control -> the status it sets (None: ORC-5's, else scheduled).
ORDER_CONTROL: dict[str, OrderStatus | None] = {
    "NW": None,
    "XO": None,
    "SC": None,
    "CA": OrderStatus.CANCELLED,
    "OC": OrderStatus.CANCELLED,
    "DC": OrderStatus.DISCONTINUED,
}

#: ORC-5 order status (HL7 table 0038) -> domain status.
ORDER_STATUS = {
    "SC": OrderStatus.SCHEDULED,
    "IP": OrderStatus.IN_PROGRESS,
    "CM": OrderStatus.COMPLETED,
    "HD": OrderStatus.ON_HOLD,
    "CA": OrderStatus.CANCELLED,
    "DC": OrderStatus.DISCONTINUED,
}


class UnusableMessageError(Hl7Error):
    """The message was read but cannot be used (answered AE with this problem)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(problem.text)


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """ORM^O01 / OMI^O23: orders to create, update or cancel."""

    orders: tuple[Order, ...]


@dataclass(frozen=True, slots=True)
class PatientEvent:
    """ADT^A01 / A04 / A08: a patient registered or updated."""

    patient: Patient


@dataclass(frozen=True, slots=True)
class MergeEvent:
    """ADT^A40: each (surviving, prior) pair; the prior patient's records move to the survivor."""

    merges: tuple[tuple[Patient, Patient], ...]


Event = OrderEvent | PatientEvent | MergeEvent


def _value(text: str) -> str | None:
    """``None`` for an empty field and for HL7's explicit null ``""``."""
    text = text.strip()
    return None if not text or text == '""' else text


def _unusable(
    code: ErrorCode, text: str, segment: str = "", field: int | None = None, sequence: int = 1
) -> UnusableMessageError:
    return UnusableMessageError(Problem(code, text, segment, sequence, field))


def event_from_message(message: Hl7Message) -> Event:
    """The domain event a message carries; :class:`UnusableMessageError` if it carries none."""
    header = message.header
    version = header.version_tuple
    if not header.version:
        raise _unusable(ErrorCode.REQUIRED_FIELD_MISSING, "MSH-12 (version) is empty", "MSH", 12)
    if not version or not SUPPORTED_VERSIONS[0] <= version <= SUPPORTED_VERSIONS[1]:
        raise _unusable(
            ErrorCode.UNSUPPORTED_VERSION_ID,
            f"HL7 version {header.version!r} is not supported; valid: 2.1 to 2.8.2",
            "MSH",
            12,
        )
    kind = header.kind
    if kind not in SUPPORTED_EVENTS:
        code = (
            ErrorCode.UNSUPPORTED_EVENT_CODE
            if header.message_type in {k.split("^")[0] for k in SUPPORTED_EVENTS}
            else ErrorCode.UNSUPPORTED_MESSAGE_TYPE
        )
        raise _unusable(
            code,
            f"message type {kind or '(empty)'} is not supported; valid: "
            + ", ".join(SUPPORTED_EVENTS),
            "MSH",
            9,
        )
    if header.message_type == "ADT":
        if header.trigger == "A40":
            return _merge_event(message)
        pid = message.first("PID")
        if pid is None:
            raise _unusable(ErrorCode.SEGMENT_SEQUENCE_ERROR, f"{kind} has no PID segment", "PID")
        patient = patient_from_pid(pid)
        if patient.patient_id is None:
            raise _unusable(
                ErrorCode.REQUIRED_FIELD_MISSING, "PID-3 (patient ID) is empty", "PID", 3
            )
        return PatientEvent(patient)
    return OrderEvent(orders_from_message(message))


def patient_from_pid(pid: Segment) -> Patient:
    """PID-3 (the MR identifier, else the first; issuer from CX-4), PID-5, PID-7, PID-8."""
    patient_id, issuer = _identifier(pid, 3)
    return Patient(
        patient_id=patient_id,
        issuer=issuer,
        name=person_name(pid, 5),
        birth_date=_date(pid.value(7)),
        sex=(_value(pid.value(8)) or "").upper() or None,
    )


def _identifier(segment: Segment, number: int) -> tuple[str | None, str | None]:
    """The (ID, assigning authority) of a CX list: the MR repetition, else the first with an ID."""
    chosen = 0
    reps = segment.repetitions(number)
    for i, rep in enumerate(reps, 1):
        if not _value(segment.component_of(rep, 1)):
            continue
        if chosen == 0:
            chosen = i
        if segment.component_of(rep, 5).strip().upper() == "MR":
            chosen = i
            break
    if chosen == 0:
        return None, None
    rep = reps[chosen - 1]
    issuer = _value(segment.component_of(rep, 4, 1)) or _value(segment.component_of(rep, 4, 2))
    return _value(segment.component_of(rep, 1)), issuer


def person_name(segment: Segment, number: int) -> str | None:
    """An XPN (family^given^middle^suffix^prefix) as a DICOM PN (…^prefix^suffix)."""
    reps = segment.repetitions(number)
    if not reps:
        return None
    rep = reps[0]
    family, given, middle, suffix, prefix = (
        segment.component_of(rep, n, 1).strip() for n in (1, 2, 3, 4, 5)
    )
    name = "^".join([family, given, middle, prefix, suffix]).rstrip("^")
    return name if name and name != '""' else None


def _date(text: str) -> str | None:
    digits = text.strip()[:8]
    return digits if len(digits) == 8 and digits.isdigit() else None


@dataclass
class _Request:
    obr: Segment | None
    ipc: list[Segment] = field(default_factory=list)
    zds: Segment | None = None


@dataclass
class _Group:
    orc: Segment
    tq1: Segment | None = None
    requests: list[_Request] = field(default_factory=list)


def _groups(message: Hl7Message) -> list[_Group]:
    groups: list[_Group] = []
    for segment in message.segments:
        name = segment.name
        if name == "ORC":
            groups.append(_Group(segment))
        elif name in ("OBR", "TQ1", "IPC", "ZDS"):
            if not groups:
                raise _unusable(
                    ErrorCode.SEGMENT_SEQUENCE_ERROR, f"{name} before any ORC segment", name
                )
            group = groups[-1]
            if name == "OBR":
                group.requests.append(_Request(segment))
            elif name == "TQ1":
                group.tq1 = group.tq1 or segment
            else:
                if not group.requests:
                    group.requests.append(_Request(None))
                request = group.requests[-1]
                if name == "IPC":
                    request.ipc.append(segment)
                else:
                    request.zds = request.zds or segment
    return groups


def orders_from_message(message: Hl7Message) -> tuple[Order, ...]:
    """The orders of an ORM^O01 or OMI^O23: one per OBR."""
    groups = _groups(message)
    if not groups:
        raise _unusable(ErrorCode.SEGMENT_SEQUENCE_ERROR, "the message has no ORC segment", "ORC")
    pid = message.first("PID")
    pv1 = message.first("PV1")
    patient = patient_from_pid(pid) if pid is not None else Patient()
    orders: list[Order] = []
    for number, group in enumerate(groups, 1):
        for request in group.requests or [_Request(None)]:
            orders.append(_order(group, request, number, patient, pv1))
    return tuple(orders)


def _order(
    group: _Group, request: _Request, number: int, patient: Patient, pv1: Segment | None
) -> Order:
    orc, obr = group.orc, request.obr
    ipc = request.ipc[0] if request.ipc else None
    control = orc.value(1).strip().upper()
    if control not in ORDER_CONTROL:
        raise _unusable(
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            f"order control (ORC-1) {control or '(empty)'!r} is not supported; valid: "
            + ", ".join(ORDER_CONTROL),
            "ORC",
            1,
            number,
        )
    status = ORDER_CONTROL[control] or ORDER_STATUS.get(
        orc.value(5).strip().upper(), OrderStatus.SCHEDULED
    )

    def obr_value(n: int, component: int = 1) -> str | None:
        return _value(obr.value(n, component)) if obr is not None else None

    accession = issuer = None
    if ipc is not None:
        accession = _value(ipc.value(1))
        issuer = _value(ipc.value(1, 2)) or _value(ipc.value(1, 3))
    accession = accession or obr_value(18)
    placer = _value(orc.value(2)) or obr_value(2)
    filler = _value(orc.value(3)) or obr_value(3)
    if control == "NW" and accession is None:
        where = "IPC-1 or OBR-18" if ipc is not None else "OBR-18"
        raise _unusable(
            ErrorCode.REQUIRED_FIELD_MISSING,
            f"new order without an accession number ({where} is empty)",
            "IPC" if ipc is not None else "OBR",
            1 if ipc is not None else 18,
            number,
        )
    if accession is None and placer is None and filler is None:
        raise _unusable(
            ErrorCode.REQUIRED_FIELD_MISSING,
            "order without accession, placer or filler number (OBR-18, ORC-2, ORC-3 are empty)",
            "ORC",
            2,
            number,
        )
    procedure = "44" if obr_value(44) else "4"
    code = obr_value(int(procedure))
    text = obr_value(int(procedure), 2) or obr_value(4, 2)
    study_uid = (_value(ipc.value(3)) if ipc is not None else None) or (
        _value(request.zds.value(1)) if request.zds is not None else None
    )
    requested = (_value(ipc.value(2)) if ipc is not None else None) or obr_value(19)
    modality = (_value(ipc.value(5)) if ipc is not None else None) or obr_value(24)
    department = _value(orc.value(17)) or _value(orc.value(17, 2)) or (pv1 and _value(pv1.value(3)))
    for value, limit, (segment, number_) in (
        (placer, 64, ("ORC", 2)),
        (filler, 64, ("ORC", 3)),
        (accession, 64, ("IPC", 1) if ipc is not None else ("OBR", 18)),
        (code, 64, ("OBR", int(procedure))),
        (study_uid, 64, ("IPC", 3) if ipc is not None else ("ZDS", 1)),
        (requested, 64, ("IPC", 2) if ipc is not None else ("OBR", 19)),
        (modality, 16, ("IPC", 5) if ipc is not None else ("OBR", 24)),
        (patient.patient_id, 64, ("PID", 3)),
    ):
        if value is not None and len(value) > limit:
            raise _unusable(
                ErrorCode.DATA_TYPE_ERROR,
                f"{segment}-{number_} is {len(value)} characters long; valid: at most {limit}",
                segment,
                number_,
                number,
            )
    if study_uid is not None and (problem := uid_problem(study_uid)) is not None:
        segment, number_ = ("IPC", 3) if ipc is not None else ("ZDS", 1)
        raise _unusable(
            ErrorCode.DATA_TYPE_ERROR,
            f"{segment}-{number_} is not a Study Instance UID: {problem}; valid: {VALID_UID}",
            segment,
            number_,
            number,
        )
    return Order(
        source=OrderSource.HL7,
        placer_number=placer,
        filler_number=filler,
        accession_number=accession,
        issuer=issuer,
        patient=patient,
        procedure_code=code,
        procedure_text=text,
        modality=modality.upper() if modality else None,
        priority=_priority(group, obr),
        department=department or None,
        status=status,
        study_uid=study_uid,
        requested_procedure_id=requested,
    )


def _priority(group: _Group, obr: Segment | None) -> OrderPriority:
    """TQ1-9, else ORC-7.6, else OBR-27.6; S → STAT, A → ASAP, anything else ROUTINE."""
    candidates = [
        group.tq1.value(9) if group.tq1 is not None else "",
        group.orc.value(7, 6),
        obr.value(27, 6) if obr is not None else "",
    ]
    for candidate in candidates:
        code = candidate.strip()
        if code:
            try:
                return OrderPriority(code)
            except ValueError:
                return OrderPriority.ROUTINE
    return OrderPriority.ROUTINE


def _merge_event(message: Hl7Message) -> MergeEvent:
    merges: list[tuple[Patient, Patient]] = []
    surviving: Patient | None = None
    for segment in message.segments:
        if segment.name == "PID":
            surviving = patient_from_pid(segment)
        elif segment.name == "MRG":
            if surviving is None or surviving.patient_id is None:
                raise _unusable(
                    ErrorCode.SEGMENT_SEQUENCE_ERROR,
                    "MRG without a PID (with PID-3) before it",
                    "MRG",
                    sequence=len(merges) + 1,
                )
            prior_id, prior_issuer = _identifier(segment, 1)
            if prior_id is None:
                raise _unusable(
                    ErrorCode.REQUIRED_FIELD_MISSING,
                    "MRG-1 (prior patient identifier) is empty",
                    "MRG",
                    1,
                    len(merges) + 1,
                )
            prior = Patient(patient_id=prior_id, issuer=prior_issuer, name=person_name(segment, 7))
            merges.append((surviving, prior))
    if not merges:
        raise _unusable(ErrorCode.SEGMENT_SEQUENCE_ERROR, "ADT^A40 without an MRG segment", "MRG")
    return MergeEvent(tuple(merges))
