"""Crafted data sets for a hostile peer: valid enough to be taken in, hostile where it counts.

Data sets are written as explicit VR little endian bytes (what goes on the wire
after the command, without file meta information), element by element and in
tag order, so a builder can put anything anywhere: sequences nested thousands
deep, an element of hundreds of megabytes that deflates to almost nothing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
#: ReferencedImageSequence: a sequence before the patient and study attributes.
NESTING_TAG = (0x0008, 0x1140)
#: A private OB element before the patient and study attributes: where a header bomb sits.
BOMB_TAG = (0x0009, 0x1010)
PIXEL_DATA = (0x7FE0, 0x0010)


def element_header(tag: tuple[int, int], vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", tag[0], tag[1], vr.encode(), 0, length)
    return struct.pack("<HH2sH", tag[0], tag[1], vr.encode(), length)


def element(tag: tuple[int, int], vr: str, value: bytes | str) -> bytes:
    raw = value.encode("ascii") if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return element_header(tag, vr, len(raw)) + raw


def _delimiter(tag: tuple[int, int], length: int = 0) -> bytes:
    return struct.pack("<HHL", tag[0], tag[1], length)


@dataclass(frozen=True)
class Identity:
    """The UIDs and patient of a crafted instance."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    patient_id: str = "HOSTILE-1"
    sop_class_uid: str = CT_IMAGE_STORAGE


def dataset(identity: Identity, *, before_patient: bytes = b"", after_study: bytes = b"") -> bytes:
    """A minimal CT data set; ``before_patient`` and ``after_study`` are spliced in tag order.

    ``before_patient`` must hold tags between (0008,0060) and (0010,0020);
    ``after_study`` tags after (0020,000E).
    """
    return b"".join(
        [
            element((0x0008, 0x0016), "UI", identity.sop_class_uid),
            element((0x0008, 0x0018), "UI", identity.sop_instance_uid),
            element((0x0008, 0x0060), "CS", "CT"),
            before_patient,
            element((0x0010, 0x0020), "LO", identity.patient_id),
            element((0x0020, 0x000D), "UI", identity.study_uid),
            element((0x0020, 0x000E), "UI", identity.series_uid),
            after_study,
        ]
    )


def nested_sequences(depth: int, tag: tuple[int, int] = NESTING_TAG) -> bytes:
    """A sequence whose one item holds the same sequence, ``depth`` deep (undefined lengths)."""
    opening = element_header(tag, "SQ", _UNDEFINED) + _delimiter(_ITEM, _UNDEFINED)
    closing = _delimiter(_ITEM_END) + _delimiter(_SEQUENCE_END)
    return opening * depth + closing * depth


def zeros(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    block = bytes(chunk)
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def deflate(parts: Iterable[bytes]) -> bytes:
    """Raw deflate (no zlib header), as the Deflated Explicit VR Little Endian syntax wants."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [compressor.compress(part) for part in parts]
    out.append(compressor.flush())
    return b"".join(out)


def header_bomb(identity: Identity, inflated: int) -> bytes:
    """A deflated data set with ``inflated`` zero bytes in an OB element before the study UIDs."""
    head = dataset(identity).split(element((0x0010, 0x0020), "LO", identity.patient_id))[0]
    tail = dataset(identity)[len(head) :]
    return deflate([head, element_header(BOMB_TAG, "OB", inflated), *zeros(inflated), tail])


def pixel_bomb(identity: Identity, inflated: int) -> bytes:
    """A deflated data set whose Pixel Data is about ``inflated`` zero bytes, after all else.

    The image is 4096 pixels wide, 16 bits, as many rows as fit in ``inflated``.
    """
    columns = 4096
    rows = max(1, inflated // (2 * columns))
    inflated = rows * columns * 2
    image = b"".join(
        [
            element((0x0028, 0x0002), "US", struct.pack("<H", 1)),
            element((0x0028, 0x0004), "CS", "MONOCHROME2"),
            element((0x0028, 0x0010), "US", struct.pack("<H", rows)),
            element((0x0028, 0x0011), "US", struct.pack("<H", columns)),
            element((0x0028, 0x0100), "US", struct.pack("<H", 16)),
            element((0x0028, 0x0101), "US", struct.pack("<H", 16)),
            element((0x0028, 0x0102), "US", struct.pack("<H", 15)),
            element((0x0028, 0x0103), "US", struct.pack("<H", 0)),
        ]
    )
    head = dataset(identity, after_study=image)
    return deflate([head, element_header(PIXEL_DATA, "OW", inflated), *zeros(inflated)])
