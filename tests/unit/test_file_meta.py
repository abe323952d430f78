"""The push's File Meta Information reader agrees with pydicom's on every file pydicom reads."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom.dsutils import split_dataset

from adapters.dicom.file_meta import FIRST_READ, FileMeta, FileMetaError, read_file_meta
from adapters.dicom.synthetic import encoding_variants, generate_study


def _pydicom_says(path: Path) -> FileMeta | None:
    """What pydicom's reader (pynetdicom's ``split_dataset``) finds, None if it finds no
    SOP class, instance and syntax."""
    try:
        meta, offset = split_dataset(path)
    except Exception:
        return None
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", ""))
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if not (sop_class and sop_instance and syntax):
        return None
    return FileMeta(sop_class, sop_instance, syntax, offset, path.stat().st_size)


def test_every_pydicom_test_file_and_encoding_variant_reads_as_pydicom_reads_it(
    tmp_path: Path,
) -> None:
    """pydicom's own test files and the synthetic module's encoding variants: the same SOP
    class, instance, syntax and data set offset as pydicom's reader, and a clear error
    for each file pydicom finds no file meta in."""
    files = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))
    files += [v.path for v in encoding_variants(tmp_path / "variants")]
    read = refused = 0
    for path in files:
        expected = _pydicom_says(path)
        if expected is None:
            with pytest.raises(FileMetaError, match=path.name):
                read_file_meta(path)
            refused += 1
        else:
            assert read_file_meta(path) == expected, path.name
            read += 1
    assert read > 50 and refused > 0


def test_a_file_meta_longer_than_the_first_read_is_read_whole(tmp_path: Path) -> None:
    """A private element makes the file meta longer than the first read: the data set
    still starts where pydicom says."""
    [path] = generate_study("ct_head", tmp_path / "s", instances=1, rows=16, columns=16)
    ds = dcmread(path)
    ds.file_meta.PrivateInformationCreatorUID = UID("1.2.3.4")
    ds.file_meta.PrivateInformation = b"\x01" * (3 * FIRST_READ)
    long = tmp_path / "long-meta.dcm"
    ds.save_as(long, enforce_file_format=True)
    meta = read_file_meta(long)
    assert meta == _pydicom_says(long)
    assert meta.offset > 3 * FIRST_READ


def test_a_file_meta_in_implicit_vr_is_left_to_pydicom(tmp_path: Path) -> None:
    """Group 0002 written in Implicit VR (a non-conformant writer) is not walked by its
    headers: pydicom's reader decides, and the push reads what it reads."""
    [path] = generate_study("ct_head", tmp_path / "s", instances=1, rows=16, columns=16)
    explicit = read_file_meta(path)
    elements = b"".join(
        struct.pack("<HHL", 0x0002, elem.tag.element, len(raw)) + raw
        for elem in dcmread(path).file_meta
        if elem.tag.element != 0x0000
        for raw in [elem.value if isinstance(elem.value, bytes) else _ui(str(elem.value))]
    )
    group_length = struct.pack("<HHLL", 0x0002, 0x0000, 4, len(elements))
    data = path.read_bytes()
    odd = tmp_path / "implicit-meta.dcm"
    odd.write_bytes(data[:132] + group_length + elements + data[explicit.offset :])
    expected = _pydicom_says(odd)
    assert expected is not None
    assert expected.sop_instance_uid == explicit.sop_instance_uid
    assert read_file_meta(odd) == expected


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def test_not_dicom_is_a_clear_error(tmp_path: Path) -> None:
    """A file with no DICM prefix names itself in the error."""
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(FileMetaError, match=r"bad\.dcm"):
        read_file_meta(bad)
