"""HL7 v2 to the domain model (IHE SWF field map), and acknowledgments."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.hl7.ack import AckCode, ErrorCode, Problem, build_ack, read_ack, reply_code
from adapters.hl7.mapping import (
    MergeEvent,
    OrderEvent,
    PatientEvent,
    UnusableMessageError,
    event_from_message,
)
from adapters.hl7.parse import Hl7Message, parse, read_header
from broker.model.domain import OrderPriority, OrderStatus, Patient
from tests.hl7_messages import adt, adt_a40, omi_o23, orm_o01, sample_order


def _message(text: str) -> Hl7Message:
    raw = text.encode()
    return parse(raw, read_header(raw, "utf-8"))


def _orders(text: str):  # type: ignore[no-untyped-def]
    event = event_from_message(_message(text))
    assert isinstance(event, OrderEvent)
    return event.orders


@pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.5.1"])
def test_orm_o01_round_trip(version: str) -> None:
    """ORM^O01 written from an order maps back to the same order, in v2.3.1 to 2.5.1."""
    order = sample_order(priority=OrderPriority.STAT)
    assert _orders(orm_o01(order, version=version)) == (order,)


def test_omi_o23_round_trip_with_issuer() -> None:
    """OMI^O23 v2.5.1: IPC-1 accession with its issuer, IPC-2/3/5, TQ1-9 priority."""
    order = sample_order(issuer="HOSP", priority=OrderPriority.ASAP, modality="MR")
    assert _orders(omi_o23(order)) == (order,)


@pytest.mark.parametrize(
    ("control", "orc5", "status"),
    [
        ("NW", "SC", OrderStatus.SCHEDULED),
        ("NW", "", OrderStatus.SCHEDULED),
        ("XO", "IP", OrderStatus.IN_PROGRESS),
        ("SC", "CM", OrderStatus.COMPLETED),
        ("SC", "HD", OrderStatus.ON_HOLD),
        ("CA", "", OrderStatus.CANCELLED),
        ("OC", "", OrderStatus.CANCELLED),
        ("DC", "", OrderStatus.DISCONTINUED),
    ],
)
def test_order_control_and_status(control: str, orc5: str, status: OrderStatus) -> None:
    """ORC-1 NW/XO/SC take ORC-5 (else scheduled); CA/OC cancel; DC discontinues."""
    text = orm_o01(sample_order(), control=control)
    orc = next(line for line in text.split("\r") if line.startswith("ORC"))
    fields = orc.split("|")
    fields[5] = orc5
    (order,) = _orders(text.replace(orc, "|".join(fields)))
    assert order.status is status


def test_procedure_code_falls_back_to_obr4_and_department_to_pv1() -> None:
    """Without OBR-44 the code comes from OBR-4; without ORC-17 the department is PV1-3."""
    text = orm_o01(sample_order(department=None))
    text = text.replace("||CT-CHEST^CT chest without contrast^LOCAL\r", "|\r")
    text = text.replace("|CT-CHEST^CT chest without contrast^LOCAL|", "|US1^Abdomen US^L|")
    (order,) = _orders(text)
    assert (order.procedure_code, order.procedure_text) == ("US1", "Abdomen US")
    assert order.department == "RAD-WARD"


def test_several_obr_make_several_orders() -> None:
    """Each OBR under an ORC is one order, with the ORC's numbers and the shared patient."""
    text = orm_o01(sample_order())
    obr = next(line for line in text.split("\r") if line.startswith("OBR"))
    second = obr.replace("ACC000001", "ACC000002").replace("|CT|", "|MR|")
    orders = _orders(text.replace(obr, obr + "\r" + second))
    assert [o.accession_number for o in orders] == ["ACC000001", "ACC000002"]
    assert [o.modality for o in orders] == ["CT", "MR"]
    assert orders[0].patient == orders[1].patient


def test_hl7_null_and_priority_codes() -> None:
    """HL7's "" null is no value; unknown priority codes are routine."""
    text = orm_o01(sample_order()).replace("|RP0001|", '|""|').replace("^^^^^R", "^^^^^T")
    (order,) = _orders(text)
    assert order.requested_procedure_id is None
    assert order.priority is OrderPriority.ROUTINE


@pytest.mark.parametrize("trigger", ["A01", "A04", "A08"])
def test_adt_registration_and_update(trigger: str) -> None:
    """ADT^A01/A04/A08 carry the PID's patient: MR identifier with its issuer, DICOM-order name."""
    patient = Patient("P42", "HOSP", "ZHANG^WEI", "19700203", "F")
    event = event_from_message(_message(adt(trigger, patient)))
    assert event == PatientEvent(patient)


def test_adt_a40_merge() -> None:
    """ADT^A40: MRG-1's prior patient merges into the PID's."""
    surviving, prior = Patient("P1", "HOSP", "DOE^JANE"), Patient("P0", "HOSP")
    event = event_from_message(_message(adt_a40(surviving, prior)))
    assert isinstance(event, MergeEvent)
    assert event.merges[0][0].patient_id == "P1"
    assert event.merges[0][1] == prior


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        (orm_o01(sample_order(accession_number=None)), ErrorCode.REQUIRED_FIELD_MISSING, "OBR-18"),
        (
            omi_o23(sample_order(accession_number=None)),
            ErrorCode.REQUIRED_FIELD_MISSING,
            "IPC-1 or OBR-18",
        ),
        (
            orm_o01(sample_order()).replace("ORM^O01", "ORM^O02"),
            ErrorCode.UNSUPPORTED_EVENT_CODE,
            "ORM^O02",
        ),
        (
            orm_o01(sample_order()).replace("ORM^O01", "ORU^R01"),
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            "ORU^R01",
        ),
        (
            orm_o01(sample_order()).replace("|2.3.1", "|3.0"),
            ErrorCode.UNSUPPORTED_VERSION_ID,
            "'3.0'",
        ),
        (orm_o01(sample_order(), control="RP"), ErrorCode.TABLE_VALUE_NOT_FOUND, "'RP'"),
        (
            "\r".join(line for line in orm_o01(sample_order()).split("\r") if line[:3] != "ORC"),
            ErrorCode.SEGMENT_SEQUENCE_ERROR,
            "OBR before any ORC",
        ),
        (
            adt("A08", Patient("X", None, "X^Y")).replace(
                "|X^^^^MR~OTHER-ID^^^ELSEWHERE^PI|", "||"
            ),
            ErrorCode.REQUIRED_FIELD_MISSING,
            "PID-3",
        ),
        (
            orm_o01(sample_order(accession_number="A" * 65)),
            ErrorCode.DATA_TYPE_ERROR,
            "OBR-18 is 65 characters long; valid: at most 64",
        ),
    ],
)
def test_unusable_messages_say_why(text: str, code: ErrorCode, words: str) -> None:
    """A readable message that cannot be used raises with the ERR code and words for the AE."""
    with pytest.raises(UnusableMessageError) as caught:
        event_from_message(_message(text))
    assert caught.value.problem.code is code
    assert words in caught.value.problem.text


def test_ack_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    """MSH-3/4 are ours, MSH-5/6 the sender's, MSA-2 its MSH-10; version and charset echoed."""
    header = read_header(
        orm_o01(sample_order(), control_id="X-1", charset="UNICODE UTF-8").encode(), "utf-8"
    )
    text = build_ack(
        header,
        AckCode.AA,
        application="RADBRIDGE",
        facility="GENERAL",
        control_id="ACK1",
        now=datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
    )
    assert text == (
        "MSH|^~\\&|RADBRIDGE|GENERAL|RIS|HOSP|20240301100000+0000||ACK^O01^ACK|ACK1|P|2.3.1"
        "||||||UNICODE UTF-8\rMSA|AA|X-1\r"
    )
    ack = read_ack(text.encode())
    assert (ack.code, ack.control_id) == (AckCode.AA, "X-1")


@pytest.mark.parametrize(
    ("version", "err"),
    [
        ("2.3.1", "ERR|OBR^1^18^101&Required field missing&HL70357"),
        ("2.5.1", "ERR||OBR^1^18|101^Required field missing^HL70357|E||||no accession"),
    ],
)
def test_ae_carries_an_err_segment_in_the_version_form(version: str, err: str) -> None:
    """ERR-1 (ELD) before v2.5; ERR-2/3/4/8 from v2.5; MSA-3 says why; read_ack reads it back."""
    header = read_header(orm_o01(sample_order(), version=version).encode(), "utf-8")
    problem = Problem(ErrorCode.REQUIRED_FIELD_MISSING, "no accession", "OBR", 1, 18)
    text = build_ack(header, AckCode.AE, problem, application="RB", facility="H")
    assert text.split("\r")[2] == err
    ack = read_ack(text.encode())
    assert ack.code is AckCode.AE and "no accession" in ack.text


@pytest.mark.parametrize(
    ("accept", "application", "outcome", "reply"),
    [
        ("", "", AckCode.AA, AckCode.AA),
        ("", "", AckCode.AR, AckCode.AR),
        ("AL", "NE", AckCode.AA, AckCode.CA),
        ("AL", "AL", AckCode.AE, AckCode.CE),
        ("ER", "NE", AckCode.AA, None),
        ("ER", "NE", AckCode.AR, AckCode.CR),
        ("NE", "AL", AckCode.AA, AckCode.AA),
        ("NE", "ER", AckCode.AA, None),
        ("NE", "ER", AckCode.AE, AckCode.AE),
        ("SU", "NE", AckCode.AA, AckCode.CA),
        ("NE", "NE", AckCode.AA, None),
    ],
)
def test_enhanced_acknowledgment_mode(
    accept: str, application: str, outcome: AckCode, reply: AckCode | None
) -> None:
    """MSH-15 decides the commit ACK (CA/CE/CR), else MSH-16 the application ACK, else none."""
    raw = orm_o01(sample_order(), accept_ack=accept, application_ack=application).encode()
    assert reply_code(read_header(raw, "utf-8"), outcome) is reply
