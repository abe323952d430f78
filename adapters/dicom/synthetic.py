"""Synthetic DICOM studies and files with unusual encodings.

The harness's simulated modality, the integration tests and the benchmarks use
this module to make realistic studies without shipping patient data:

* :func:`generate_study` writes a whole study of one kind (``ct_chest``,
  ``ct_head``, ``mr_brain``, ``dx_chest``) with the tags routing looks at
  (modality, body part, slice thickness, image type, descriptions, contrast).
* :func:`generate_large_study` streams a study of a given total size (2 GB for
  the memory benchmark) to disk without holding it in memory.
* :func:`encoding_variants` writes one small file per encoding a receiver must
  store as it came: other transfer syntaxes (real compressed codestreams),
  multi-frame, private and undefined-length sequences, and patient names in
  several Specific Character Sets.

Pixel data is a cheap phantom (a few ellipses that change from slice to slice
plus a fixed noise texture), not real anatomy and never all zeros. UIDs below
the study are derived from the study UID, so the same call twice writes the
same objects (useful to test duplicate detection).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from broker.errors import DicomError

StudyKind = Literal["ct_chest", "ct_head", "mr_brain", "dx_chest"]
KINDS: tuple[StudyKind, ...] = ("ct_chest", "ct_head", "mr_brain", "dx_chest")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MF_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

IMPLEMENTATION_VERSION_NAME = "RADBRIDGE_SYN1"
_MIB = 1024 * 1024

Pixels = npt.NDArray[np.uint16]


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


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    patient_name: str
    accession: str
    study_uid: str
    when: datetime
    sex: str = "F"
    birth_date: str = "19650412"


@dataclass(frozen=True)
class _Series:
    """One series to write: its tags, geometry and how to paint a slice."""

    number: int
    modality: str
    sop_class: str
    description: str
    rows: int
    columns: int
    instances: int
    pixel_spacing: float
    thickness: float
    paint: Callable[[int, int], Pixels]
    tags: dict[str, Any] = field(default_factory=dict)
    orientation: tuple[float, ...] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# --------------------------------------------------------------------- phantom


class _Phantom:
    """Ellipse phantoms on a fixed grid; each slice costs a few array passes."""

    def __init__(self, rows: int, columns: int, seed: int = 7) -> None:
        y, x = np.mgrid[-1.0 : 1.0 : rows * 1j, -1.0 : 1.0 : columns * 1j]
        self.x = x.astype(np.float32)
        self.y = y.astype(np.float32)
        rng = np.random.default_rng(seed)
        self.noise: Pixels = rng.integers(0, 24, size=(rows, columns), dtype=np.uint16)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float) -> npt.NDArray[np.float32]:
        """Normalised radius of an ellipse: < 1 inside."""
        r: npt.NDArray[np.float32] = ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2
        return r

    def texture(self, index: int) -> Pixels:
        """The noise field, shifted per slice so that no two slices are equal."""
        return np.roll(self.noise, index * 7, axis=1)


def _ct_chest_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = _Phantom(rows, columns)
    body = ph.ellipse(0.0, 0.05, 0.88, 0.62)
    lung_r = ph.ellipse(-0.42, 0.0, 0.3, 0.45)
    lung_l = ph.ellipse(0.42, 0.0, 0.3, 0.45)
    heart = ph.ellipse(0.1, 0.05, 0.28, 0.24)
    spine = ph.ellipse(0.0, 0.5, 0.09, 0.09)
    nodule = ph.ellipse(-0.45, -0.1, 0.03, 0.03)

    def paint(index: int, _series: int) -> Pixels:
        z = index / max(count - 1, 1)  # 0 = apex, 1 = lung bases
        img = np.full((rows, columns), 24, dtype=np.uint16)  # air, -1000 HU
        img[body < 1.0] = 1064  # soft tissue, 40 HU
        lung = 0.35 + 0.65 * float(np.sin(np.pi * min(0.15 + z, 1.0)))
        img[(lung_r < lung) | (lung_l < lung)] = 174  # lung, -850 HU
        if z > 0.4:
            img[heart < (z - 0.4) * 2.0] = 1084
        if 0.45 < z < 0.5:
            img[nodule < 1.0] = 1074
        img[spine < 1.0] = 1724  # bone, 700 HU
        img += ph.texture(index)
        return img

    return paint


def _ct_head_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = _Phantom(rows, columns)
    head = ph.ellipse(0.0, 0.0, 0.72, 0.88)
    ventricle_r = ph.ellipse(-0.12, -0.05, 0.07, 0.25)
    ventricle_l = ph.ellipse(0.12, -0.05, 0.07, 0.25)

    def paint(index: int, _series: int) -> Pixels:
        z = index / max(count - 1, 1)  # 0 = skull base, 1 = vertex
        scale = 1.0 + 1.5 * z * z  # the head narrows towards the vertex
        r = head * scale
        img = np.full((rows, columns), 24, dtype=np.uint16)
        img[r < 1.0] = 2024  # skull, 1000 HU
        img[r < 0.85] = 1059  # brain, 35 HU
        if 0.3 < z < 0.7:
            img[(ventricle_r < 1.0) | (ventricle_l < 1.0)] = 1029  # CSF, 5 HU
        img += ph.texture(index)
        return img

    return paint


# (white matter, grey matter, CSF, fat) per weighting
_MR_CONTRAST = {
    "T1": (900, 600, 200, 1400),
    "T2": (500, 700, 1800, 900),
    "FLAIR": (600, 800, 100, 700),
    "T1C": (900, 620, 220, 1400),
}


def _mr_brain_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = _Phantom(rows, columns)
    head = ph.ellipse(0.0, 0.0, 0.7, 0.86)
    ventricles = ph.ellipse(0.0, -0.05, 0.2, 0.22)
    lesion = ph.ellipse(0.3, -0.2, 0.05, 0.05)
    weights = list(_MR_CONTRAST.values())

    def paint(index: int, series: int) -> Pixels:
        wm, gm, csf, fat = weights[(series - 1) % len(weights)]
        z = index / max(count - 1, 1)
        r = head * (1.0 + 1.2 * z * z)
        img = np.zeros((rows, columns), dtype=np.uint16)
        img[r < 1.0] = fat  # scalp
        img[r < 0.9] = csf
        img[r < 0.82] = gm
        img[r < 0.6] = wm
        if 0.3 < z < 0.7:
            img[ventricles < 1.0] = csf
        if series == 4 and 0.4 < z < 0.6:
            img[lesion < 1.0] = 1600  # enhancing lesion on the post-contrast T1
        img += ph.texture(index + 31 * series)
        return img

    return paint


def _dx_chest_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = _Phantom(rows, columns)
    body = ph.ellipse(0.0, 0.1, 0.85, 0.95)
    lung_r = ph.ellipse(-0.38, -0.05, 0.28, 0.6)
    lung_l = ph.ellipse(0.38, -0.05, 0.28, 0.6)
    heart = ph.ellipse(0.12, 0.3, 0.3, 0.25)
    spine = np.abs(ph.x) < 0.06
    ribs = (np.sin(ph.y * 40.0) > 0.6).astype(np.uint16) * 300
    side = ph.ellipse(0.0, 0.1, 0.5, 0.95)

    def paint(index: int, _series: int) -> Pixels:
        img = np.full((rows, columns), 100, dtype=np.uint16)
        if index % 2 == 0:  # PA
            img[body < 1.0] = 2600
            img[(lung_r < 1.0) | (lung_l < 1.0)] = 900
            img[(lung_r < 1.0) | (lung_l < 1.0)] += ribs[(lung_r < 1.0) | (lung_l < 1.0)]
            img[heart < 1.0] = 3000
            img[spine & (body < 1.0)] = 3400
        else:  # lateral
            img[side < 1.0] = 2800
            img[ph.ellipse(0.0, -0.05, 0.35, 0.6) < 1.0] = 1100
        img += ph.texture(index)
        return img

    return paint


# ------------------------------------------------------------------- datasets


def _fmt(value: float) -> str:
    """A DS value that fits in 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _uid(*parts: object) -> UID:
    """A UID derived from the given parts: the same parts give the same UID."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _age(birth_date: str, when: datetime) -> str:
    born = datetime.strptime(birth_date, "%Y%m%d")
    years = when.year - born.year - ((when.month, when.day) < (born.month, born.day))
    return f"{years:03d}Y"


def _study_dataset(patient: _Patient, description: str, station: str) -> Dataset:
    """Patient, study, equipment and SOP common tags shared by every instance."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "EXAMPLE-GH"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, patient.when)
    ds.PatientWeight = "68"
    ds.StudyInstanceUID = patient.study_uid
    ds.StudyDate = patient.when.strftime("%Y%m%d")
    ds.StudyTime = patient.when.strftime("%H%M%S")
    ds.AccessionNumber = patient.accession
    ds.StudyID = "1"
    ds.StudyDescription = description
    ds.ReferringPhysicianName = "SMITH^JOHN"
    ds.InstitutionName = "Example General Hospital"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.StationName = station
    ds.SoftwareVersions = "radbridge-synthetic 1"
    ds.DeviceSerialNumber = "SYN-0001"
    ds.BurnedInAnnotation = "NO"
    return ds


def _series_dataset(base: Dataset, patient: _Patient, series: _Series) -> Dataset:
    ds = copy.deepcopy(base)
    when = patient.when
    ds.SOPClassUID = series.sop_class
    ds.Modality = series.modality
    ds.SeriesInstanceUID = _uid(patient.study_uid, "series", series.number)
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionNumber = 1
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = series.rows
    ds.Columns = series.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.PixelSpacing = [_fmt(series.pixel_spacing)] * 2
    if series.orientation is not None:
        ds.FrameOfReferenceUID = _uid(patient.study_uid, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [_fmt(v) for v in series.orientation]
        ds.SliceThickness = _fmt(series.thickness)
    for keyword, value in series.tags.items():
        setattr(ds, keyword, value)
    ds.file_meta = _file_meta(series.sop_class, "", ExplicitVRLittleEndian)
    return ds


def _write_series(out_dir: Path, patient: _Patient, base: Dataset, series: _Series) -> list[Path]:
    """Write every instance of one series; one dataset is reused for speed."""
    folder = out_dir / f"S{series.number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    ds = _series_dataset(base, patient, series)
    x0 = -series.columns * series.pixel_spacing / 2
    y0 = -series.rows * series.pixel_spacing / 2
    paths = []
    for index in range(series.instances):
        sop_uid = _uid(ds.SeriesInstanceUID, "instance", index + 1)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        if series.orientation is not None:
            z = -index * series.thickness
            ds.ImagePositionPatient = [_fmt(x0), _fmt(y0), _fmt(z)]
            ds.SliceLocation = _fmt(z)
        ds.PixelData = series.paint(index, series.number).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        path = folder / f"I{index + 1:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_tags(kind: str, thickness: float) -> dict[str, Any]:
    chest = kind == "ct_chest"
    return {
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "BodyPartExamined": "CHEST" if chest else "HEAD",
        "ProtocolName": "Thorax 1mm" if chest else "Head routine",
        "Manufacturer": "GE MEDICAL SYSTEMS",
        "ManufacturerModelName": "Revolution CT",
        "KVP": "120",
        "XRayTubeCurrent": 220 if chest else 300,
        "ExposureTime": 500,
        "ConvolutionKernel": "LUNG" if chest else "STANDARD",
        "ReconstructionDiameter": "360" if chest else "240",
        "DataCollectionDiameter": "500",
        "GantryDetectorTilt": "0",
        "TableHeight": "155",
        "RotationDirection": "CW",
        "ScanOptions": "HELICAL MODE",
        "SpacingBetweenSlices": _fmt(thickness),
        "RescaleIntercept": "-1024",
        "RescaleSlope": "1",
        "RescaleType": "HU",
        "WindowCenter": ["40", "-600"] if chest else "40",
        "WindowWidth": ["400", "1500"] if chest else "80",
    }


def _mr_series_tags(weighting: str) -> dict[str, Any]:
    tr, te, ti, seq = {
        "T1": ("500", "10", None, "SE"),
        "T2": ("4000", "90", None, "SE"),
        "FLAIR": ("9000", "120", "2500", "IR"),
        "T1C": ("500", "10", None, "SE"),
    }[weighting]
    tags: dict[str, Any] = {
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "BodyPartExamined": "HEAD",
        "Manufacturer": "SIEMENS",
        "ManufacturerModelName": "Skyra",
        "ScanningSequence": seq,
        "SequenceVariant": ["SK", "SP"],
        "ScanOptions": "",
        "MRAcquisitionType": "2D",
        "SequenceName": f"*{weighting.lower()}2d1",
        "RepetitionTime": tr,
        "EchoTime": te,
        "EchoTrainLength": 1 if weighting.startswith("T1") else 16,
        "MagneticFieldStrength": "3",
        "ImagingFrequency": "123.2",
        "ImagedNucleus": "1H",
        "FlipAngle": "90",
        "NumberOfAverages": "1",
        "SpacingBetweenSlices": "6",
        "ProtocolName": f"{weighting}_tra",
    }
    if ti is not None:
        tags["InversionTime"] = ti
    if weighting == "T1C":
        tags["ContrastBolusAgent"] = "Gadobutrol 1.0 mmol/ml"
        tags["ContrastBolusRoute"] = "IV"
        tags["ContrastBolusVolume"] = "7"
    return tags


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _view_code(view: str) -> Dataset:
    item = (
        _code("272479007", "postero-anterior")
        if view == "PA"
        else _code("399173006", "left lateral")
    )
    item.ViewModifierCodeSequence = Sequence()
    return item


def _fixed_view(paint: Callable[[int, int], Pixels], view: int) -> Callable[[int, int], Pixels]:
    """A painter that always paints view ``view`` (each DX view is its own series)."""
    return lambda _index, _series: paint(view, 1)


def _plan(
    kind: StudyKind, instances: int | None, rows: int | None, columns: int | None
) -> tuple[str, str, list[_Series]]:
    """(study description, station name, series) for one study kind."""
    if kind in ("ct_chest", "ct_head"):
        chest = kind == "ct_chest"
        count = instances if instances is not None else (200 if chest else 32)
        r, c = rows or 512, columns or 512
        thickness = 1.0 if chest else 5.0
        paint = (_ct_chest_painter if chest else _ct_head_painter)(r, c, count)
        series = _Series(
            number=2 if chest else 3,
            modality="CT",
            sop_class=CT_IMAGE_STORAGE,
            description="Thorax 1.0 mm lung" if chest else "Head 5mm axial",
            rows=r,
            columns=c,
            instances=count,
            pixel_spacing=(360.0 if chest else 240.0) / c,
            thickness=thickness,
            paint=paint,
            tags=_ct_tags(kind, thickness),
        )
        description = "CT CHEST WITHOUT CONTRAST" if chest else "CT HEAD WITHOUT CONTRAST"
        return description, "CT01", [series]
    if kind == "mr_brain":
        count = instances if instances is not None else 24
        r, c = rows or 256, columns or 256
        paint = _mr_brain_painter(r, c, count)
        names = {
            "T1": "t1_se_tra",
            "T2": "t2_tse_tra",
            "FLAIR": "t2_tirm_tra_dark-fluid",
            "T1C": "t1_se_tra_post_contrast",
        }
        series_list = [
            _Series(
                number=n,
                modality="MR",
                sop_class=MR_IMAGE_STORAGE,
                description=desc,
                rows=r,
                columns=c,
                instances=count,
                pixel_spacing=230.0 / c,
                thickness=5.0,
                paint=paint,
                tags=_mr_series_tags(w),
            )
            for n, (w, desc) in enumerate(names.items(), start=1)
        ]
        return "MR BRAIN WITH AND WITHOUT CONTRAST", "MR01", series_list
    if kind == "dx_chest":
        count = instances if instances is not None else 2
        r, c = rows or 2048, columns or 2048
        paint = _dx_chest_painter(r, c, count)
        series_list = []
        for index in range(count):
            view = "PA" if index % 2 == 0 else "LL"
            tags: dict[str, Any] = {
                "ImageType": ["ORIGINAL", "PRIMARY"],
                "BodyPartExamined": "CHEST",
                "Manufacturer": "Carestream Health",
                "ManufacturerModelName": "DRX-Evolution",
                "PresentationIntentType": "FOR PRESENTATION",
                "ViewPosition": view,
                "PatientOrientation": ["L", "F"] if view == "PA" else ["A", "F"],
                "ImagerPixelSpacing": [_fmt(430.0 / c)] * 2,
                "DetectorType": "SCINTILLATOR",
                "KVP": "125",
                "ExposureTime": 8,
                "DistanceSourceToDetector": "1800",
                "PixelIntensityRelationship": "LOG",
                "PixelIntensityRelationshipSign": 1,
                "RescaleIntercept": "0",
                "RescaleSlope": "1",
                "RescaleType": "US",
                "PresentationLUTShape": "IDENTITY",
                "ImageLaterality": "U",
                "PositionerType": "",
                "AcquisitionContextSequence": Sequence(),
                "AnatomicRegionSequence": Sequence([_code("43799004", "Chest")]),
                "ViewCodeSequence": Sequence([_view_code(view)]),
                "WindowCenter": "2048",
                "WindowWidth": "4096",
            }
            series_list.append(
                _Series(
                    number=index + 1,
                    modality="DX",
                    sop_class=DX_PRESENTATION_STORAGE,
                    description=f"Chest {view}",
                    rows=r,
                    columns=c,
                    instances=1,
                    pixel_spacing=430.0 / c,
                    thickness=0.0,
                    paint=_fixed_view(paint, index),
                    tags=tags,
                    orientation=None,
                )
            )
        return "XR CHEST 2 VIEWS", "DX01", series_list
    raise DicomError(f"no such study kind {kind!r}; valid kinds are {', '.join(KINDS)}")


def generate_study(
    kind: StudyKind,
    out_dir: Path | str,
    *,
    instances: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
    patient_id: str = "PAT0001",
    patient_name: str = "DOE^JANE",
    accession: str = "ACC0001",
    study_uid: str | None = None,
) -> list[Path]:
    """Write one synthetic study into ``out_dir/S<series>/I<instance>.dcm``.

    ``instances`` is the slice count of the CT series (default 200 for
    ``ct_chest``: 512x512, 1 mm, about 105 MB; 32 for ``ct_head``: 5 mm), the
    slice count of each of the four ``mr_brain`` series (T1, T2, FLAIR and a
    post-contrast T1 with ContrastBolusAgent; default 24 at 256x256) or the
    number of ``dx_chest`` views (PA, lateral, …; default 2 at 2048x2048).
    ``rows`` and ``columns`` override the matrix. Files are Explicit VR Little
    Endian Part 10 files. Returns the paths in series and instance order.
    """
    out = Path(out_dir)
    patient = _Patient(
        patient_id=patient_id,
        patient_name=patient_name,
        accession=accession,
        study_uid=study_uid or str(generate_uid()),
        when=datetime.now().replace(microsecond=0),
    )
    description, station, series_list = _plan(kind, instances, rows, columns)
    base = _study_dataset(patient, description, station)
    paths: list[Path] = []
    for series in series_list:
        paths.extend(_write_series(out, patient, base, series))
    return paths


# ----------------------------------------------------------------- large study


def _explicit_le_header(tag: int, vr: str, length: int) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    head = group.to_bytes(2, "little") + element.to_bytes(2, "little") + vr.encode("ascii")
    return head + b"\x00\x00" + length.to_bytes(4, "little")


def generate_large_study(
    out_dir: Path | str,
    total_bytes: int,
    instance_bytes: int = 64 * _MIB,
    *,
    patient_id: str = "PAT0002",
    patient_name: str = "DOE^JOHN",
    accession: str = "ACC0002",
    study_uid: str | None = None,
) -> list[Path]:
    """Write a study of about ``total_bytes`` as multi-frame 512x512 16-bit instances.

    Each instance is a Multi-frame Grayscale Word Secondary Capture (Modality
    CT, body part CHEST) of about ``instance_bytes`` (64 MiB: 128 frames by
    default). The header is written by pydicom and the pixel data is appended
    frame by frame, so the generator holds one frame (512 KiB) at a time.
    """
    if total_bytes <= 0 or instance_bytes <= 0:
        raise DicomError("total_bytes and instance_bytes must be positive byte counts")
    out = Path(out_dir) / "S001"
    out.mkdir(parents=True, exist_ok=True)
    side = 512
    frame_bytes = side * side * 2
    frames = max(1, instance_bytes // frame_bytes)
    count = max(1, -(-total_bytes // (frames * frame_bytes)))
    patient = _Patient(
        patient_id=patient_id,
        patient_name=patient_name,
        accession=accession,
        study_uid=study_uid or str(generate_uid()),
        when=datetime.now().replace(microsecond=0),
    )
    paint = _ct_chest_painter(side, side, frames)
    series = _Series(
        number=1,
        modality="CT",
        sop_class=MF_GRAYSCALE_WORD_SC_STORAGE,
        description="Large multi-frame volume",
        rows=side,
        columns=side,
        instances=count,
        pixel_spacing=0.7,
        thickness=1.0,
        paint=paint,
        orientation=None,
        tags=_sc_tags(frames),
    )
    ds = _series_dataset(_study_dataset(patient, "CT CHEST LARGE VOLUME", "CT01"), patient, series)
    frame_cache = [paint(i, 1).astype("<u2").tobytes() for i in range(min(frames, 16))]
    paths = []
    for index in range(count):
        sop_uid = _uid(ds.SeriesInstanceUID, "instance", index + 1)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        path = out / f"I{index + 1:04d}.dcm"
        with path.open("wb") as fp:
            dcmwrite(fp, ds, enforce_file_format=True)
            fp.write(_explicit_le_header(0x7FE00010, "OW", frames * frame_bytes))
            for frame in range(frames):
                fp.write(frame_cache[(frame + index) % len(frame_cache)])
        paths.append(path)
    return paths


# ------------------------------------------------------------ encoding variants


def _run_tool(*args: str) -> None:
    if shutil.which(args[0]) is None:
        raise DicomError(f"{args[0]} not found; install dcmtk (apt-get install -y dcmtk)")
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DicomError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


def _sc_tags(frames: int) -> dict[str, Any]:
    """Secondary capture tags (single- or multi-frame) in place of the CT ones."""
    tags: dict[str, Any] = {
        "ImageType": ["DERIVED", "SECONDARY"],
        "BodyPartExamined": "CHEST",
        "Manufacturer": "GE MEDICAL SYSTEMS",
        "ConversionType": "WSD",
        "PatientOrientation": ["L", "P"],
    }
    if frames > 1:
        tags.update(
            {
                "NumberOfFrames": frames,
                "FrameIncrementPointer": 0x00182005,
                "SliceLocationVector": [_fmt(-i * 1.0) for i in range(frames)],
                "RescaleIntercept": "0",
                "RescaleSlope": "1",
                "RescaleType": "US",
                "PresentationLUTShape": "IDENTITY",
            }
        )
    return tags


def _small_image(
    name: str,
    *,
    bits: int = 16,
    frames: int = 1,
    charset: str | list[str] = "ISO_IR 100",
    patient_name: str = "DOE^JANE",
) -> Dataset:
    """A 128x128 image of its own study: a CT slice, or an SC image for 8 bits or frames."""
    study_uid = _uid("variant", name, "study")
    patient = _Patient(
        patient_id=f"SYN-{name.upper()}"[:64],
        patient_name=patient_name,
        accession=f"V{zlib.crc32(name.encode()) % 10**8:08d}",
        study_uid=study_uid,
        when=datetime(2024, 3, 15, 9, 30, 0),
    )
    base = _study_dataset(patient, f"Encoding variant {name}", "CT01")
    base.SpecificCharacterSet = charset
    base.PatientName = patient_name
    paint = _ct_chest_painter(128, 128, 10)
    pixels = np.stack([paint(5 + i, 1) for i in range(frames)])
    ct = bits == 16 and frames == 1
    sop_class = (
        CT_IMAGE_STORAGE
        if ct
        else (SC_IMAGE_STORAGE if frames == 1 else MF_GRAYSCALE_WORD_SC_STORAGE)
    )
    series = _Series(
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
        tags=_ct_tags("ct_chest", 1.0) if ct else _sc_tags(frames),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0) if ct else None,
    )
    ds = _series_dataset(base, patient, series)
    ds.SOPInstanceUID = _uid(study_uid, "instance")
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
    ref.ReferencedSOPInstanceUID = _uid(ds.SOPInstanceUID, "reference")
    code = _code("51185008", "Thorax")
    code.AnatomicRegionModifierSequence = Sequence([_code("7771000", "Left")])
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
