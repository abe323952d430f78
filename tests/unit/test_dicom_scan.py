"""The one-pass header scan (adapters.dicom_scan) and the plain-ASCII value reading of
adapters.dicom.mapping read what pydicom reads: the same elements, the same index record,
on pydicom's own test files and every encoding variant radbridge's synthetic module makes;
whatever the scan is not sure of it leaves to pydicom, and it never raises."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset

from adapters import dicom_header, dicom_scan
from adapters.dicom import mapping
from adapters.dicom.receiving import ReceivingFile
from adapters.dicom.synthetic import encoding_variants, generate_study

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _pydicom_files() -> list[Path]:
    found = [*PYDICOM_FILES.rglob("*.dcm"), *(PYDICOM_FILES / "charset_files").glob("*")]
    return sorted(p for p in found if p.is_file())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    made = tmp_path_factory.mktemp("scan")
    variants = [v.path for v in encoding_variants(made / "variants")]
    ct = generate_study("ct_chest", made / "ct", instances=2, rows=32, columns=32)
    return [*variants, *ct, *_pydicom_files()]


def _pydicom_text(ds: Dataset, keyword: str) -> str | None:
    """What the index read before the plain-ASCII path: pydicom's decoded value."""
    try:
        value: Any = ds.get(keyword)
    except Exception:
        return None
    return mapping._value_text(value)


def _record(path: Path, *, through_pydicom: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        if through_pydicom:
            patch.setattr(
                mapping,
                "read_header",
                lambda p, _head=None: dicom_header.read_header(p, defer_size=4096),
            )
            patch.setattr(mapping, "_text", _pydicom_text)
        try:
            return mapping.instance_record_from_part10(
                path,
                calling_ae="CT01",
                called_ae="RADBRIDGE",
                peer_address="127.0.0.1",
                received_at=NOW,
            )
        except Exception as exc:  # the same refusal either way
            return (type(exc).__name__, str(exc))


def test_the_scan_finds_the_elements_pydicom_reads(files: list[Path]) -> None:
    """Every file the scan reads gives pydicom's elements up to the pixel data, each with
    the value pydicom decodes from it (character sets, sequences, private tags); the scan
    reads every synthetic variant but Deflated and Big Endian."""
    scanned = 0
    for path in files:
        ds = dicom_scan.scan(path)
        if ds is None:
            continue
        scanned += 1
        reference = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert list(ds.keys()) == list(reference.keys()), path.name
        for element in reference:
            assert ds[element.tag].value == element.value, (path.name, element.tag)
        assert ds.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID
    skipped = {p.name for p in files if dicom_scan.scan(p) is None}
    assert {"deflated_explicit_vr_le.dcm", "explicit_vr_be.dcm"} <= skipped
    assert not skipped & {"undefined_length_sequences.dcm", "charset_gb18030.dcm"}
    assert scanned > 60


def test_the_index_record_is_the_one_pydicom_gives(
    files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index record of each file (patient, UIDs, dates, series facts, routing tags) is
    the one read entirely through pydicom, or the same refusal."""
    for path in files:
        fast = _record(path, through_pydicom=False, monkeypatch=monkeypatch)
        slow = _record(path, through_pydicom=True, monkeypatch=monkeypatch)
        assert fast == slow, path.name


def test_the_first_bytes_kept_by_the_receiver_give_the_header_the_file_gives(
    files: list[Path],
) -> None:
    """The header scanned from the first bytes the receiving file kept in memory (the whole
    file when it is shorter) is the one scanned from the file: a header longer than those
    bytes is read from the file, and what the scan cannot read is left to pydicom alike."""
    for path in files:
        head = path.read_bytes()[: dicom_scan.FIRST_READ]
        from_file, from_head = dicom_scan.scan(path), dicom_scan.scan(path, head)
        assert (from_head is None) == (from_file is None), path.name
        if from_file is not None and from_head is not None:
            assert list(from_head.keys()) == list(from_file.keys()), path.name
            for element in from_file:
                assert from_head[element.tag].value == element.value, (path.name, element.tag)


def test_the_receiving_file_scans_the_header_it_was_written_with(
    files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written through the listener's receiving file in PDU-sized pieces gives the
    header scanned from the file itself, or None where the file must be read (a header
    longer than the bytes it keeps, or one left to pydicom), and its size."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for path in files:
        data = path.read_bytes()
        spooled = ReceivingFile(".dcm")
        for at in range(0, len(data), 4096):
            spooled.write(data[at : at + 4096])
        spooled.close()
        from_file, kept = dicom_scan.scan(path), spooled.header()
        assert spooled.size == len(data)
        if kept is None:
            assert from_file is None or len(data) > dicom_scan.FIRST_READ, path.name
            continue
        assert from_file is not None, path.name
        assert list(kept.keys()) == list(from_file.keys()), path.name
        for element in from_file:
            assert kept[element.tag].value == element.value, (path.name, element.tag)


def test_cut_or_odd_bytes_are_left_to_pydicom(files: list[Path], tmp_path: Path) -> None:
    """A file cut anywhere in its header, or with its header overwritten, makes the scan
    answer None (pydicom reads and judges it) or a header; it never raises."""
    source = next(p for p in files if p.name == "undefined_length_sequences.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    for end in range(0, min(len(source), 4000), 7):
        cut.write_bytes(source[:end])
        result = dicom_scan.scan(cut)
        assert result is None or isinstance(result, Dataset)
    for at in range(132, min(len(source), 3000), 11):
        cut.write_bytes(source[:at] + b"\xff\xff\xff\xff" + source[at + 4 :])
        result = dicom_scan.scan(cut)
        assert result is None or isinstance(result, Dataset)


def test_a_header_longer_than_the_scan_reads_goes_to_pydicom(tmp_path: Path) -> None:
    """A header that goes on past MAX_HEADER bytes (a long private value before the pixel
    data) is not scanned: pydicom reads it, with its deferred values."""
    [path] = generate_study("ct_chest", tmp_path / "ct", instances=1, rows=16, columns=16)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "RADBRIDGE")
    ds.add_new(0x00091011, "OB", b"\0" * (dicom_scan.MAX_HEADER + 10))
    ds.save_as(path)
    assert dicom_scan.scan(path) is None
    assert str(mapping.read_header(path).StudyInstanceUID) == str(ds.StudyInstanceUID)


def test_a_header_past_the_first_read_is_scanned_whole(tmp_path: Path) -> None:
    """A header longer than the first read (FIRST_READ bytes) but within MAX_HEADER is read
    again whole and scanned: the same elements as pydicom's, the long value among them."""
    [path] = generate_study("ct_chest", tmp_path / "ct", instances=1, rows=16, columns=16)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "RADBRIDGE")
    ds.add_new(0x00091011, "OB", b"\1" * (dicom_scan.FIRST_READ * 2))
    ds.save_as(path)
    scanned = dicom_scan.scan(path)
    assert scanned is not None
    assert scanned[0x00091011].value == b"\1" * (dicom_scan.FIRST_READ * 2)
    assert list(scanned.keys()) == list(pydicom.dcmread(path, stop_before_pixels=True).keys())
