"""A received object's header read in one pass over its bytes, when it is plainly encoded.

pydicom's reader spends about 0.3 ms on a typical CT header (its element generator,
a file read per element, a ``FileDataset`` built with its meta read separately); a
listener pays that for every C-STORE. :func:`scan` reads the same elements from one
buffer: the file meta (group 0002, Explicit VR Little Endian), then the data set's
top-level elements up to the pixel data, in Implicit or Explicit VR Little Endian
(every transfer syntax but Deflated and Big Endian). Each element becomes pydicom's
own ``RawDataElement``, so values are decoded by pydicom when read (character sets
and all), exactly as after ``dcmread``; only finding the elements is done here.

Whatever it is not sure of, it leaves to pydicom: :func:`scan` returns None for a
file without a preamble and a File Meta group length, another transfer syntax, an
unknown VR, a sequence nested deeper than :data:`MAX_DEPTH`, an undefined length
anywhere but a sequence, or a header longer than :data:`MAX_HEADER` bytes, and for
anything cut short. The caller then reads the file with pydicom, which decides.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import VR

#: Header bytes read at first, and at most (a longer header, e.g. a large document, goes
#: to pydicom).
FIRST_READ = 16 * 1024
MAX_HEADER = 256 * 1024
#: Sequences nested deeper than this go to pydicom (which refuses the very deep ones).
MAX_DEPTH = 32

_VRS = frozenset(vr.value.encode("ascii") for vr in VR if len(vr.value) == 2)
#: Explicit VRs with a reserved field and a 32-bit length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"})
_LONG_VRS |= {b"UR", b"UT", b"UV"}
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT = struct.Struct("<HH2sH")
_UL = struct.Struct("<L")
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Float, Double Float and Pixel Data: the header ends there (as pydicom's stop_before_pixels).
_PIXEL_DATA = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_META_END = frozenset({0x00030000})
_SYNTAX_TAG = BaseTag(0x00020010)
#: The transfer syntaxes whose data sets are Little Endian and not deflated, by their bytes.
_TRANSFER_SYNTAX = {
    uid.encode("ascii"): UID(uid)
    for uid in AllTransferSyntaxes
    if uid not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
}


#: An explicit VR as text (as pydicom's ``RawDataElement`` holds it), by its bytes.
_VR_TEXT = {vr: vr.decode("ascii") for vr in _VRS}
#: ``RawDataElement(...)`` without the Python-level ``__new__`` of its named tuple.
_new_raw = cast(Callable[[type, tuple[Any, ...]], RawDataElement], tuple.__new__)


class UnsureError(Exception):
    """The bytes are not what the scan reads: pydicom will."""


def element(buf: bytes, at: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """The element header at ``at``: its tag, VR (None if implicit), length, value offset.
    Raises :class:`UnsureError` for an unknown VR, ``struct.error`` when ``buf`` ends
    inside the header."""
    if implicit:
        group, number, length = _IMPLICIT.unpack_from(buf, at)
        return group << 16 | number, None, length, at + 8
    group, number, vr, length = _EXPLICIT.unpack_from(buf, at)
    tag = group << 16 | number
    if group == 0xFFFE:  # item and delimiters have no VR
        return tag, None, _UL.unpack_from(buf, at + 4)[0], at + 8
    if vr not in _VRS:
        raise UnsureError
    if vr in _LONG_VRS:
        return tag, vr, _UL.unpack_from(buf, at + 8)[0], at + 12
    return tag, vr, length, at + 8


def _skip_sequence(buf: bytes, at: int, implicit: bool, depth: int) -> int:
    """The offset after an undefined-length sequence's delimiter (items from ``at``)."""
    if depth > MAX_DEPTH:
        raise UnsureError
    while True:
        tag, _vr, length, at = element(buf, at, True)  # items are the same in both
        if tag == _SEQUENCE_END:
            return at
        if tag != _ITEM:
            raise UnsureError
        if length != UNDEFINED:
            at += length
            continue
        while True:  # an undefined-length item: its elements until the item delimiter
            tag, vr, length, at = element(buf, at, implicit)
            if tag == _ITEM_END:
                break
            if length != UNDEFINED:
                at += length
            elif vr in (None, b"SQ") or tag == 0x7FE00010:  # a sequence, or encapsulated data
                at = _skip_sequence(buf, at, implicit, depth + 1)
            else:
                raise UnsureError


def _elements(
    buf: bytes, at: int, end: int, implicit: bool, stop: frozenset[int]
) -> tuple[dict[BaseTag, DataElement | RawDataElement], bool]:
    """The top-level elements from ``at`` until ``end`` or a tag in ``stop``; whether one
    in ``stop`` was met. The short explicit-VR and implicit element headers, most of a
    header, are read here; the rest by :func:`element` (every listener pays this loop for
    every C-STORE)."""
    found: dict[BaseTag, DataElement | RawDataElement] = {}
    unpack_implicit, unpack_explicit = _IMPLICIT.unpack_from, _EXPLICIT.unpack_from
    vr_text = _VR_TEXT.get
    while at < end:
        if implicit:
            group, number, length = unpack_implicit(buf, at)
            tag, text_vr, value_at = group << 16 | number, None, at + 8
        else:
            group, number, vr, length = unpack_explicit(buf, at)
            text_vr = vr_text(vr)
            if text_vr is None or group == 0xFFFE or vr in _LONG_VRS:
                tag, long_vr, length, value_at = element(buf, at, False)
                text_vr = None if long_vr is None else _VR_TEXT[long_vr]
            else:
                tag, value_at = group << 16 | number, at + 8
        if tag in stop:
            return found, True
        if length == UNDEFINED:
            if text_vr not in (None, "SQ"):
                raise UnsureError
            after = _skip_sequence(buf, value_at, implicit, 1)
            value, length, at = buf[value_at : after - 8], after - 8 - value_at, after
            # An implicit VR with an undefined length is a sequence, as pydicom reads it.
            text_vr = "SQ"
        else:
            at = value_at + length
            value = buf[value_at:at]
        if at > len(buf):
            raise UnsureError
        key = BaseTag(tag)
        found[key] = _new_raw(
            RawDataElement, (key, text_vr, length, value, value_at, implicit, True)
        )
    if at != end:
        raise UnsureError
    return found, False


def scan(path: Path, head: bytes | None = None) -> Dataset | None:
    """The header (up to the pixel data) of a Part 10 file, its ``file_meta`` set, or None
    when pydicom must read it (see the module). The first :data:`FIRST_READ` bytes hold
    most headers (``head``: those bytes, when they are at hand as the file was written);
    a longer one is read again up to :data:`MAX_HEADER`."""
    if head is None:
        with path.open("rb", buffering=0) as file:
            head = file.read(FIRST_READ)
    found = scan_head(head)
    if found is not None or len(head) < FIRST_READ:
        return found
    with path.open("rb", buffering=0) as file:
        buf = file.read(MAX_HEADER)
        return _scan(buf, whole=len(buf) < MAX_HEADER or not file.read(1))


def scan_head(head: bytes) -> Dataset | None:
    """:func:`scan` of a file's first :data:`FIRST_READ` bytes alone (the whole file when
    fewer): None also when the header goes on past them."""
    return _scan(head, whole=len(head) < FIRST_READ)


def _scan(buf: bytes, *, whole: bool) -> Dataset | None:
    """:func:`scan` of the file's first bytes (``whole``: all of it)."""
    try:
        if buf[128:132] != b"DICM" or buf[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
            return None
        meta_end = 144 + _UL.unpack_from(buf, 140)[0]
        raw_meta, _ = _elements(buf, 132, meta_end, False, _META_END)
        value = raw_meta[_SYNTAX_TAG].value
        syntax = _TRANSFER_SYNTAX.get(value.strip(b"\0 ")) if isinstance(value, bytes) else None
        if syntax is None:
            return None
        implicit = syntax == ImplicitVRLittleEndian
        raw, at_pixels = _elements(buf, meta_end, len(buf), implicit, _PIXEL_DATA)
        if not (at_pixels or whole):  # the header goes on past what was read
            return None
        dataset = Dataset(raw)
        dataset.set_original_encoding(implicit, True)
        dataset.file_meta = FileMetaDataset(raw_meta)
    except Exception:  # whatever the scan cannot read, pydicom reads and judges
        return None
    return dataset


__all__ = [
    "FIRST_READ",
    "MAX_DEPTH",
    "MAX_HEADER",
    "UNDEFINED",
    "UnsureError",
    "element",
    "scan",
    "scan_head",
]
