"""DIMSE on the wire, lean: P-DATA framing and C-STORE command sets as bytes.

What the lean C-STORE paths (:mod:`adapters.dicom.sending` out,
:mod:`adapters.dicom.storing` in) need of PS3.7 and PS3.8, without building
pydicom Datasets or pynetdicom primitives: the P-DATA-TF PDU and PDV item
headers, the few group 0000 elements of a C-STORE request and response
(always Implicit VR Little Endian, PS3.7 6.3.1), and a reader of a command
set's elements by number. pynetdicom still negotiates the association and
serves every other message.
"""

from __future__ import annotations

import struct

from broker.model.errors import DicomError

#: P-DATA-TF header (type, reserved, length) and PDV item header (length, context, control).
PDU = struct.Struct(">BBL")
PDV = struct.Struct(">LBB")
#: Bytes before the first data byte of a P-DATA-TF holding one PDV.
HEADER = PDU.size + PDV.size
#: PDU types (PS3.8 9.3.1).
P_DATA_TF = 0x04
A_ABORT = 0x07
#: PDV message control header bits (PS3.8 E.2).
COMMAND = 0x01
LAST = 0x02
#: Command Field values (PS3.7 E.1) and Command Data Set Type "no data set".
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
#: Group 0000 element numbers used here.
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


def element(number: int, value: bytes, pad: bytes = b"\0") -> bytes:
    """One group 0000 element, its value padded to even length (UI with NUL, text with a space)."""
    if len(value) % 2:
        value += pad
    return _ELEMENT.pack(0x0000, number, len(value)) + value


def ushort(value: int) -> bytes:
    return _US.pack(value)


def command_set(elements: list[bytes]) -> bytes:
    """The group length element followed by ``elements`` (already in ascending order)."""
    body = b"".join(elements)
    return element(0x0000, struct.pack("<L", len(body))) + body


def store_request(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1)."""
    return command_set(
        [
            element(AFFECTED_SOP_CLASS_UID, sop_class.encode("ascii")),
            element(COMMAND_FIELD, ushort(C_STORE_RQ)),
            element(MESSAGE_ID, ushort(message_id)),
            element(PRIORITY, ushort(0x0000)),  # medium
            element(COMMAND_DATA_SET_TYPE, ushort(0x0000)),  # a data set follows
            element(AFFECTED_SOP_INSTANCE_UID, sop_instance.encode("ascii")),
        ]
    )


def store_response(
    message_id: int, sop_class: bytes, sop_instance: bytes, status: int, comment: str = ""
) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2); the UIDs as the request had them."""
    elements = [
        element(AFFECTED_SOP_CLASS_UID, sop_class),
        element(COMMAND_FIELD, ushort(C_STORE_RSP)),
        element(MESSAGE_ID_BEING_RESPONDED_TO, ushort(message_id)),
        element(COMMAND_DATA_SET_TYPE, ushort(NO_DATA_SET)),
        element(STATUS, ushort(status)),
    ]
    if comment:
        text = comment[:64].encode("ascii", "replace")
        elements.append(element(ERROR_COMMENT, text, pad=b" "))
    elements.append(element(AFFECTED_SOP_INSTANCE_UID, sop_instance))
    return command_set(elements)


def command_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF carrying a whole command set as its last fragment."""
    return (
        PDU.pack(P_DATA_TF, 0, PDV.size + len(command))
        + PDV.pack(2 + len(command), context_id, COMMAND | LAST)
        + command
    )


def command_fields(command: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """The elements of a group 0000 command set by element number (raises DicomError)."""
    fields: dict[int, bytes] = {}
    at = 0
    while at < len(command):
        if at + _ELEMENT.size > len(command):
            raise DicomError("the peer's command set ends inside an element header")
        group, number, length = _ELEMENT.unpack_from(command, at)
        at += _ELEMENT.size
        if group != 0x0000 or at + length > len(command):
            raise DicomError("the peer's command set is malformed")
        fields[number] = bytes(command[at : at + length])
        at += length
    return fields


def us(fields: dict[int, bytes], number: int) -> int | None:
    """An US element's value, None when it is absent or too short."""
    value = fields.get(number)
    return _US.unpack(value[:2])[0] if value is not None and len(value) >= 2 else None


def uid(fields: dict[int, bytes], number: int) -> str:
    """A UI element's value as text, its padding removed ('' when absent)."""
    return fields.get(number, b"").decode("ascii", "replace").rstrip("\0 ")


__all__ = [
    "A_ABORT",
    "COMMAND",
    "C_STORE_RQ",
    "C_STORE_RSP",
    "HEADER",
    "LAST",
    "NO_DATA_SET",
    "PDU",
    "PDV",
    "P_DATA_TF",
    "command_fields",
    "command_pdu",
    "command_set",
    "element",
    "store_request",
    "store_response",
    "uid",
    "us",
]
