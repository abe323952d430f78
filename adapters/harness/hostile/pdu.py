"""DICOM Upper Layer PDUs and DIMSE command sets, built and read byte by byte.

Nothing here validates: a builder writes exactly what it is given (any
length field, any item), so a test can say what a broken or hostile peer
puts on the wire. The reader splits what came back into PDUs and decodes
just enough of each (association result, abort reason, command status) to
assert on. PS3.8 section 9.3 and PS3.7 section 9.3 give the layouts.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1453.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
#: A-ASSOCIATE-RQ/AC fixed fields after the 6-byte header: version, reserved, AEs, reserved.
_FIXED = 68


class PduType(enum.IntEnum):
    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


def header(pdu_type: int, length: int) -> bytes:
    """A PDU header announcing ``length`` bytes, whatever follows it."""
    return struct.pack(">BBL", pdu_type, 0, length)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return header(pdu_type, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)[:16]


def associate_rq(
    called_ae: str = "RADBRIDGE",
    calling_ae: str = "HOSTILE",
    contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN,)),),
    *,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` (abstract syntax, transfer syntaxes) as IDs 1, 3…"""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for index, (abstract, syntaxes) in enumerate(contexts):
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, s.encode()) for s in syntaxes)
        items += _item(0x20, bytes([2 * index + 1, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
    items += _item(0x50, user)
    fixed = struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + bytes(32)
    return pdu(PduType.A_ASSOCIATE_RQ, fixed + items)


def release_rq() -> bytes:
    return pdu(PduType.A_RELEASE_RQ, bytes(4))


def abort(source: int = 0, reason: int = 0) -> bytes:
    return pdu(PduType.A_ABORT, bytes([0, 0, source, reason]))


def p_data(context_id: int, fragment: bytes, *, command: bool, last: bool) -> bytes:
    """A P-DATA-TF PDU with one PDV: a command or data set fragment."""
    control = (0x01 if command else 0) | (0x02 if last else 0)
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return pdu(PduType.P_DATA_TF, pdv)


def _element(group: int, element: int, value: bytes) -> bytes:
    """An implicit VR little endian element, as every command set is encoded."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", group, element, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str | None = None,
    *,
    has_dataset: bool,
) -> bytes:
    """A DIMSE request command set (group 0000), with its group length."""
    body = _element(0, 0x0002, sop_class_uid.encode())
    body += _element(0, 0x0100, _us(command_field))
    body += _element(0, 0x0110, _us(message_id))
    if command_field == 0x0001:
        body += _element(0, 0x0700, _us(0))  # priority: medium
    body += _element(0, 0x0800, _us(0x0000 if has_dataset else 0x0101))
    if sop_instance_uid is not None:
        body += _element(0, 0x1000, sop_instance_uid.encode())
    return _element(0, 0x0000, struct.pack("<L", len(body))) + body


def c_store_rq(
    context_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    dataset: bytes,
    *,
    message_id: int = 1,
    max_pdu: int = 16384,
) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of one C-STORE request: the command, then ``dataset`` in fragments."""
    command = command_set(0x0001, message_id, sop_class_uid, sop_instance_uid, has_dataset=True)
    yield p_data(context_id, command, command=True, last=True)
    size = max(1, max_pdu - 6)
    for start in range(0, max(len(dataset), 1), size):
        chunk = dataset[start : start + size]
        yield p_data(context_id, chunk, command=False, last=start + size >= len(dataset))


def c_echo_rq(context_id: int = 1, *, message_id: int = 1) -> bytes:
    command = command_set(0x0030, message_id, VERIFICATION, has_dataset=False)
    return p_data(context_id, command, command=True, last=True)


@dataclass(frozen=True)
class Pdu:
    """One PDU that came back."""

    type: int
    body: bytes

    @property
    def name(self) -> str:
        try:
            return PduType(self.type).name
        except ValueError:
            return f"unknown 0x{self.type:02X}"

    @property
    def reject(self) -> tuple[int, int, int]:
        """A-ASSOCIATE-RJ result, source and reason."""
        return self.body[1], self.body[2], self.body[3]

    @property
    def abort(self) -> tuple[int, int]:
        """A-ABORT source and reason."""
        return self.body[2], self.body[3]

    def accepted_contexts(self) -> dict[int, str]:
        """A-ASSOCIATE-AC: the accepted presentation context IDs and their transfer syntax."""
        accepted: dict[int, str] = {}
        for item_type, value in _items(self.body[_FIXED:]):
            if item_type == 0x21 and value[2] == 0:
                syntaxes = [v.decode().rstrip("\0") for t, v in _items(value[4:]) if t == 0x40]
                accepted[value[0]] = syntaxes[0] if syntaxes else ""
        return accepted

    def max_pdu(self) -> int:
        """A-ASSOCIATE-AC: the maximum length the listener receives (0: unlimited)."""
        for item_type, value in _items(self.body[_FIXED:]):
            if item_type == 0x50:
                for sub_type, sub in _items(value):
                    if sub_type == 0x51:
                        length: int = struct.unpack(">L", sub)[0]
                        return length
        return 0

    def pdvs(self) -> Iterator[tuple[int, int, bytes]]:
        """P-DATA-TF: (context ID, control header, fragment) of each PDV."""
        offset = 0
        while offset + 6 <= len(self.body):
            (length,) = struct.unpack(">L", self.body[offset : offset + 4])
            yield (
                self.body[offset + 4],
                self.body[offset + 5],
                self.body[offset + 6 : offset + 4 + length],
            )
            offset += 4 + length


def _items(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        item_type, _, length = struct.unpack(">BBH", data[offset : offset + 4])
        yield item_type, data[offset + 4 : offset + 4 + length]
        offset += 4 + length


@dataclass(frozen=True)
class Response:
    """A DIMSE response command: its status and error comment."""

    status: int
    comment: str = ""
    elements: dict[tuple[int, int], bytes] = field(default_factory=dict)


def read_command(data: bytes) -> Response:
    """Decode an implicit VR little endian command set into its status and comment."""
    elements: dict[tuple[int, int], bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack("<HHL", data[offset : offset + 8])
        elements[(group, element)] = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
    raw = elements.get((0, 0x0900), b"\xff\xff")
    comment = elements.get((0, 0x0902), b"").decode("ascii", "replace").strip(" \0")
    return Response(struct.unpack("<H", raw[:2])[0], comment, elements)
