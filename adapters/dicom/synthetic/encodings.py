"""One small file per encoding a receiver must store unchanged."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from adapters.dicom.synthetic.common import (
    CT_IMAGE_STORAGE,
    MF_GRAYSCALE_WORD_SC_STORAGE,
    SC_IMAGE_STORAGE,
    SeriesPlan,
    StudyPatient,
    code_item,
    derived_uid,
    sc_tags,
    series_dataset,
    study_dataset,
)
from adapters.dicom.synthetic.ct import ct_chest_painter, ct_tags
from broker.model.errors import DicomError


@dataclass(frozen=True)
class Variant:
    """One file written by :func:`encoding_variants` and what a reader must find in it."""

    name: str
    path: Path
    transfer_syntax_uid: str
    patient_name: str
    """The patient name as decoded text (what a correct decoder shows)."""
    sop_instance_uid: str
    study_uid: str


def _run_tool(*args: str) -> None:
    if shutil.which(args[0]) is None:
        raise DicomError(f"{args[0]} not found; install dcmtk (apt-get install -y dcmtk)")
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DicomError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def _small_image(
    name: str,
    *,
    bits: int = 16,
    frames: int = 1,
    charset: str | list[str] = "ISO_IR 100",
    patient_name: str = "DOE^JANE",
) -> Dataset:
    """A 128x128 image of its own study: a CT slice, or an SC image for 8 bits or frames."""
    study_uid = derived_uid("variant", name, "study")
    patient = StudyPatient(
        patient_id=f"SYN-{name.upper()}"[:64],
        patient_name=patient_name,
        accession=f"V{zlib.crc32(name.encode()) % 10**8:08d}",
        study_uid=study_uid,
        when=datetime(2024, 3, 15, 9, 30, 0),
    )
    base = study_dataset(patient, f"Encoding variant {name}", "CT01")
    base.SpecificCharacterSet = charset
    base.PatientName = patient_name
    paint = ct_chest_painter(128, 128, 10)
    pixels = np.stack([paint(5 + i, 1) for i in range(frames)])
    ct = bits == 16 and frames == 1
    sop_class = (
        CT_IMAGE_STORAGE
        if ct
        else (SC_IMAGE_STORAGE if frames == 1 else MF_GRAYSCALE_WORD_SC_STORAGE)
    )
    series = SeriesPlan(
        number=1,
        modality="CT",
        sop_class=sop_class,
        description=name,
        rows=128,
        columns=128,
        instances=1,
        pixel_spacing=0.7,
        thickness=1.0,
        paint=paint,
        tags=ct_tags("ct_chest", 1.0) if ct else sc_tags(frames),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0) if ct else None,
    )
    ds = series_dataset(base, patient, series)
    ds.SOPInstanceUID = derived_uid(study_uid, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 1
    if ct:
        ds.ImagePositionPatient = ["-44.8", "-44.8", "-5"]
    if bits == 8:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = (pixels >> 4).astype(np.uint8).tobytes()
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    return ds


def _private_block(creator_group: int = 0x0009) -> Dataset:
    """A private creator with a nested private sequence, inside a dataset."""
    inner = Dataset()
    block = inner.private_block(creator_group, "RADBRIDGE SYNTH 1.0", create=True)
    block.add_new(0x13, "UL", 42)
    block.add_new(0x14, "LO", "inner private value")
    return inner


def _undefined_lengths(seq_elem: Any) -> None:
    """Mark a sequence, its items and every nested sequence as undefined length."""
    seq_elem.is_undefined_length = True
    for item in seq_elem.value:
        item.is_undefined_length_sequence_item = True
        for elem in item:
            if elem.VR == "SQ":
                _undefined_lengths(elem)


def _add_sequences(ds: Dataset, *, undefined: bool) -> None:
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    ref.ReferencedSOPInstanceUID = derived_uid(ds.SOPInstanceUID, "reference")
    code = code_item("51185008", "Thorax")
    code.AnatomicRegionModifierSequence = Sequence([code_item("7771000", "Left")])
    ds.ReferencedImageSequence = Sequence([ref])
    ds.AnatomicRegionSequence = Sequence([code])
    block = ds.private_block(0x0009, "RADBRIDGE SYNTH 1.0", create=True)
    block.add_new(0x01, "LO", "outer private value")
    item = Dataset()
    inner_block = item.private_block(0x0009, "RADBRIDGE SYNTH 1.0", create=True)
    inner_block.add_new(0x11, "LO", "item private value")
    inner_block.add_new(0x12, "SQ", Sequence([_private_block(), _private_block()]))
    block.add_new(0x10, "SQ", Sequence([item]))
    if undefined:
        for elem in ds:
            if elem.VR == "SQ":
                _undefined_lengths(elem)


def _write(ds: Dataset, path: Path, transfer_syntax: str) -> Path:
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _variant(name: str, path: Path, patient_name: str) -> Variant:
    ds = dcmread(path, stop_before_pixels=True)
    return Variant(
        name=name,
        path=path,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        patient_name=patient_name,
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
    )


_CHARSETS: dict[str, tuple[str | list[str], str]] = {
    "charset_gb18030": ("GB18030", "Wang^XiaoDong=王^小东"),
    "charset_ir87": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "charset_ir149": (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
    "charset_latin1": ("ISO_IR 100", "Müller^Jürgen"),
    "charset_utf8": ("ISO_IR 192", "Nguyễn^Văn Thành=阮^文成"),
}


def _encoded_variants(out: Path, tmp: Path) -> Iterator[tuple[str, Path, str]]:
    name = "implicit_vr_le"
    yield name, _write(_small_image(name), out / f"{name}.dcm", ImplicitVRLittleEndian), "DOE^JANE"

    name = "explicit_vr_be"
    ds = _small_image(name)
    pixels = np.frombuffer(ds.PixelData, dtype="<u2")
    ds.PixelData = pixels.astype(">u2").tobytes()  # OW is written in the file's byte order
    ds["PixelData"].VR = "OW"
    yield name, _write(ds, out / f"{name}.dcm", ExplicitVRBigEndian), "DOE^JANE"

    name = "deflated_explicit_vr_le"
    path = _write(_small_image(name), out / f"{name}.dcm", DeflatedExplicitVRLittleEndian)
    yield name, path, "DOE^JANE"

    for name, tool, options, bits in (
        ("jpeg_baseline", "dcmcjpeg", ("+eb", "+un"), 8),
        ("jpeg_lossless_sv1", "dcmcjpeg", ("+e1", "+un"), 16),
        ("jpeg_ls_lossless", "dcmcjpls", ("+el", "+un"), 16),
    ):
        source = _write(_small_image(name, bits=bits), tmp / f"{name}.dcm", ExplicitVRLittleEndian)
        _run_tool(tool, *options, str(source), str(out / f"{name}.dcm"))
        yield name, out / f"{name}.dcm", "DOE^JANE"

    name = "rle_lossless"
    ds = _small_image(name)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    yield name, _write(ds, out / f"{name}.dcm", RLELossless), "DOE^JANE"

    name = "jpeg2000_lossless"
    ds = _small_image(name)
    try:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    except (RuntimeError, ValueError) as exc:
        raise DicomError(
            "JPEG 2000 encoding needs pylibjpeg and pylibjpeg-openjpeg installed"
        ) from exc
    yield name, _write(ds, out / f"{name}.dcm", JPEG2000Lossless), "DOE^JANE"

    name = "multiframe"
    ds = _small_image(name, frames=10)
    yield name, _write(ds, out / f"{name}.dcm", ExplicitVRLittleEndian), "DOE^JANE"

    name = "private_sequences"
    ds = _small_image(name)
    _add_sequences(ds, undefined=False)
    yield name, _write(ds, out / f"{name}.dcm", ExplicitVRLittleEndian), "DOE^JANE"

    name = "undefined_length_sequences"
    ds = _small_image(name)
    _add_sequences(ds, undefined=True)
    yield name, _write(ds, out / f"{name}.dcm", ExplicitVRLittleEndian), "DOE^JANE"

    for name, (charset, patient_name) in _CHARSETS.items():
        ds = _small_image(name, charset=charset, patient_name=patient_name)
        if name == "charset_gb18030":
            ds.StudyDescription = "胸部CT平扫"
        yield name, _write(ds, out / f"{name}.dcm", ExplicitVRLittleEndian), patient_name


def encoding_variants(out_dir: Path | str) -> list[Variant]:
    """Write one small Part 10 file per encoding a receiver must store unchanged.

    Transfer syntaxes: Implicit VR LE, Explicit VR BE (pixel data byte-swapped
    as the standard requires), Deflated Explicit VR LE (pydicom), JPEG baseline
    (8-bit image) and JPEG lossless SV1 (dcmtk ``dcmcjpeg``), JPEG-LS lossless
    (``dcmcjpls``), RLE lossless (pydicom's own encoder) and JPEG 2000 lossless
    (a real encode by pydicom's ``compress`` with the pylibjpeg-openjpeg
    plugin). Structures: a 10-frame image, private creators with nested
    private sequences, and undefined-length sequences and items. Patient
    names in GB18030, ISO 2022 IR 87, ISO 2022 IR 149, ISO_IR 100 and
    ISO_IR 192, encoded by pydicom's own charset code. Each variant is its own
    study and patient. Needs dcmtk's codecs on PATH.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="radbridge-variants-") as tmp:
        return [
            _variant(name, path, patient_name)
            for name, path, patient_name in _encoded_variants(out, Path(tmp))
        ]
