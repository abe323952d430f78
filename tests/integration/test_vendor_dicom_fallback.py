"""DICOM push transfer-syntax fallback: the stored syntax first, converted when it is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    MPEG2MPML,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from adapters.dicom.synthetic import encoding_variants
from adapters.vendors.dicom import (
    MAX_CONTEXTS,
    DicomPushError,
    DicomPushSettings,
    DicomTransport,
    TranscodeError,
    fallback_syntaxes,
)
from broker.model.vendor import is_retryable
from tests.jobs_data import sending_job
from tests.peers import LOOPBACK, StoreSCP, dataset_bytes

pytestmark = pytest.mark.xdist_group("vendor_dicom_fallback")

JOB = sending_job(3, "lungai", "1.2.3")
#: A SOP class UID no storescp knows (a private root).
PRIVATE_ROOT = "1.2.826.0.1.3680043.8.498.77"


def _transport(port: int) -> DicomTransport:
    return DicomTransport(
        "lungai", DicomPushSettings(ae_title="VENDOR", host=LOOPBACK, port=port, timeout=10)
    )


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic encoding variants, by name."""
    out = tmp_path_factory.mktemp("variants")
    return {v.name: v.path for v in encoding_variants(out)}


@pytest.fixture
def uncompressed_only(tmp_path: Path) -> Iterator[StoreSCP]:
    """A storescp that accepts only uncompressed syntaxes (``+x=``, no ``+xa``)."""
    with StoreSCP(tmp_path / "plain", ae_title="VENDOR", extra_args=["+x="]) as peer:
        yield peer


def _received(peer: StoreSCP) -> dict[str, Path]:
    """What the peer holds, by SOP Instance UID."""
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in peer.files()}


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _tiny(path: Path, sop_class: str, syntax: str = ExplicitVRLittleEndian) -> Path:
    """A minimal Part 10 file of ``sop_class`` (no pixel data)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "PAT-TINY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_fallback_context_syntaxes() -> None:
    """Any non-Explicit-LE file: fallback [Explicit LE, Implicit LE]; else [Implicit LE]."""
    assert fallback_syntaxes({RLELossless}) == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    assert fallback_syntaxes({ExplicitVRLittleEndian, ImplicitVRLittleEndian}) == [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ]
    assert fallback_syntaxes({ExplicitVRLittleEndian}) == [ImplicitVRLittleEndian]


def test_compressed_files_arrive_decompressed_with_the_same_pixels(
    uncompressed_only: StoreSCP, variants: dict[str, Path]
) -> None:
    """JPEG-LS, RLE, JPEG 2000 and deflated files reach an uncompressed-only vendor decoded."""
    converted = ["jpeg_ls_lossless", "rle_lossless", "jpeg2000_lossless", "deflated_explicit_vr_le"]
    as_stored = ["multiframe", "implicit_vr_le", "explicit_vr_be"]
    files = [variants[n] for n in converted + as_stored]
    outcome = _transport(uncompressed_only.port).send(JOB, files)
    assert outcome.instances == len(files)
    assert "converted 4 to Explicit VR Little Endian" in outcome.detail
    received = _received(uncompressed_only)
    assert len(received) == len(files)
    for name in converted:
        original = dcmread(variants[name])
        got = dcmread(received[_uid(variants[name])])
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert np.array_equal(got.pixel_array, original.pixel_array), name
        assert got.SOPInstanceUID == original.SOPInstanceUID, name
        assert got.PatientName == original.PatientName, name
    for name in as_stored:
        assert dataset_bytes(received[_uid(variants[name])]) == dataset_bytes(variants[name]), name


def test_implicit_only_vendor_gets_every_file_converted(
    tmp_path: Path, variants: dict[str, Path]
) -> None:
    """A vendor taking only Implicit VR LE gets Explicit LE, big endian and RLE files converted."""
    names = ["multiframe", "explicit_vr_be", "rle_lossless", "charset_ir87"]
    files = [variants[n] for n in names]
    with StoreSCP(tmp_path / "implicit", ae_title="VENDOR", extra_args=["+xi"]) as peer:
        outcome = _transport(peer.port).send(JOB, files)
        received = _received(peer)
    assert "converted 4 to Implicit VR Little Endian" in outcome.detail
    for name in names:
        original = dcmread(variants[name])
        got = dcmread(received[_uid(variants[name])])
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian, name
        assert np.array_equal(got.pixel_array, original.pixel_array), name
        assert got.PatientName == original.PatientName, name


def test_vendor_accepting_the_stored_syntax_gets_it_byte_for_byte(
    tmp_path: Path, variants: dict[str, Path]
) -> None:
    """With every syntax accepted (``+xa``), JPEG-LS and RLE files go exactly as stored."""
    files = [variants["jpeg_ls_lossless"], variants["rle_lossless"]]
    with StoreSCP(tmp_path / "all", ae_title="VENDOR") as peer:
        outcome = _transport(peer.port).send(JOB, files)
        received = _received(peer)
    assert "converted" not in outcome.detail
    for path in files:
        assert dataset_bytes(received[_uid(path)]) == dataset_bytes(path), path.name


def test_missing_decoder_is_a_clear_permanent_failure(
    uncompressed_only: StoreSCP, variants: dict[str, Path], tmp_path: Path
) -> None:
    """A file acceptable only decoded, with no decoder for it, fails the job before sending."""
    ds = dcmread(variants["rle_lossless"])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    mpeg = tmp_path / "mpeg2.dcm"
    ds.save_as(mpeg, enforce_file_format=True)
    transport = _transport(uncompressed_only.port)
    with pytest.raises(
        TranscodeError, match=r"mpeg2\.dcm: pydicom has no pixel data decoder for MPEG2"
    ) as err:
        transport.send(JOB, [variants["implicit_vr_le"], mpeg])
    assert not is_retryable(transport, err.value)
    assert uncompressed_only.files() == []


def test_sop_class_refused_outright_fails_before_sending(
    uncompressed_only: StoreSCP, variants: dict[str, Path], tmp_path: Path
) -> None:
    """A SOP class the vendor refuses in every syntax sends nothing and retries, naming it."""
    private = _tiny(tmp_path / "private.dcm", f"{PRIVATE_ROOT}.1")
    transport = _transport(uncompressed_only.port)
    with pytest.raises(
        DicomPushError, match=r"no presentation context for 1 .*77\.1 in Explicit VR"
    ) as err:
        transport.send(JOB, [variants["implicit_vr_le"], private])
    assert is_retryable(transport, err.value)
    assert uncompressed_only.files() == []


def test_more_than_128_contexts_split_into_associations(tmp_path: Path) -> None:
    """130 SOP classes (260 contexts with fallbacks) go over three associations, all delivered."""
    syntaxes = (ExplicitVRLittleEndian, RLELossless)
    files = [
        _tiny(tmp_path / f"{n:03d}.dcm", f"{PRIVATE_ROOT}.{n}", syntaxes[n % 2])
        for n in range(1, 131)
    ]
    with StoreSCP(tmp_path / "all", ae_title="VENDOR", extra_args=["-pm"]) as peer:
        outcome = _transport(peer.port).send(JOB, files)
        received = _received(peer)
    assert MAX_CONTEXTS < 2 * 130
    assert "over 3 associations" in outcome.detail
    assert sorted(received) == sorted(_uid(p) for p in files)
