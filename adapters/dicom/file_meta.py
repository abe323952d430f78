"""A spooled file's File Meta Information, read without building a Dataset.

A push needs three values of each file's group 0002 (its SOP class, SOP
instance and transfer syntax) and where its data set starts. pydicom's reader
(``pynetdicom.dsutils.split_dataset``) builds a Dataset of every element for
that, about 0.2 ms a file: on a 200-instance CT a quarter of the push.

:func:`read_file_meta` reads the first few KiB of the file once and walks the
group 0002 elements (always Explicit VR Little Endian, PS3.10 7.1) by their
headers (:func:`adapters.dicom_scan.element`, the one reader of an element's header).
A file that does not follow PS3.10 the plain way (no ``DICM`` prefix,
an element without a valid explicit VR, an undefined length) is read by
pydicom's reader instead, so whatever pydicom reads still goes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pynetdicom.dsutils import split_dataset

from adapters.dicom_scan import UNDEFINED, UnsureError, element
from broker.model.errors import DicomError

#: Bytes read at first: the file meta of an ordinary file is a few hundred bytes.
FIRST_READ = 4096
#: Longest File Meta Information read (a private element may make it long, not this long).
MAX_FILE_META = 1 << 20
_PREFIX_END = 132
_SOP_CLASS = 0x0002
_SOP_INSTANCE = 0x0003
_TRANSFER_SYNTAX = 0x0010


class FileMetaError(DicomError):
    """A file's File Meta Information cannot be read (or names no SOP class, instance or
    transfer syntax)."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What a C-STORE of a Part 10 file needs from its File Meta Information."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    offset: int
    """Where the data set starts (after the file meta)."""
    size: int
    """The file's size in bytes."""


class _UnusualLayoutError(Exception):
    """Not the plain PS3.10 layout: pydicom's reader decides."""


def _uid(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\0 ")


def _walk(head: bytes, whole: bool) -> tuple[dict[int, bytes], int] | None:
    """The group 0002 values by element number and the data set's offset; None when
    ``head`` ends before the file meta does and is not ``whole`` (all there is to read)."""
    if head[128:_PREFIX_END] != b"DICM":
        raise _UnusualLayoutError
    values: dict[int, bytes] = {}
    at = _PREFIX_END
    while True:
        if at == len(head) and whole:  # a file meta with no data set after it
            return values, at
        try:
            tag, _vr, length, start = element(head, at, implicit=False)
        except struct.error:  # the element's header is cut short
            break
        except UnsureError as exc:
            raise _UnusualLayoutError from exc
        if tag >> 16 != 0x0002:
            return values, at
        if length == UNDEFINED:
            raise _UnusualLayoutError
        if start + length > len(head):
            break
        values[tag & 0xFFFF] = head[start : start + length]
        at = start + length
    if whole:
        raise _UnusualLayoutError  # cut short: pydicom says how
    return None


def read_file_meta(path: Path) -> FileMeta:
    """The SOP class, SOP instance, transfer syntax, data set offset and size of ``path``
    (see the module). Raises :class:`FileMetaError` or ``OSError``."""
    with path.open("rb", buffering=0) as file:
        size = os.fstat(file.fileno()).st_size
        limit = min(size, MAX_FILE_META)
        head = file.read(FIRST_READ)
        try:
            walked = _walk(head, len(head) >= limit)
            while walked is None:
                more = file.read(limit - len(head))
                if not more:  # the file shrank under us
                    raise _UnusualLayoutError
                head += more
                walked = _walk(head, len(head) >= limit)
        except _UnusualLayoutError:
            walked = None
    if walked is None:
        return _read_with_pydicom(path, size)
    values, offset = walked
    return _checked(
        path,
        FileMeta(
            _uid(values.get(_SOP_CLASS, b"")),
            _uid(values.get(_SOP_INSTANCE, b"")),
            _uid(values.get(_TRANSFER_SYNTAX, b"")),
            offset,
            size,
        ),
    )


def _read_with_pydicom(path: Path, size: int) -> FileMeta:
    try:
        meta, offset = split_dataset(path)
    except (InvalidDicomError, ValueError, EOFError, struct.error) as exc:
        raise FileMetaError(f"cannot read the file meta information of {path.name}: {exc}") from exc
    return _checked(
        path,
        FileMeta(
            str(meta.get("MediaStorageSOPClassUID", "")),
            str(meta.get("MediaStorageSOPInstanceUID", "")),
            str(meta.get("TransferSyntaxUID", "")),
            offset,
            size,
        ),
    )


def _checked(path: Path, meta: FileMeta) -> FileMeta:
    if not meta.sop_class_uid or not meta.sop_instance_uid or not meta.transfer_syntax_uid:
        raise FileMetaError(
            f"{path.name} has no SOP class, SOP instance or transfer syntax in its file "
            "meta information"
        )
    return meta


__all__ = ["FileMeta", "FileMetaError", "read_file_meta"]
