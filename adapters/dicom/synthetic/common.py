"""What every synthetic study shares: patient and series plans, the phantom, tags, writing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
MG_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MF_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"

IMPLEMENTATION_VERSION_NAME = "RADBRIDGE_SYN1"
MIB = 1024 * 1024

Pixels = npt.NDArray[np.uint16]


@dataclass(frozen=True)
class StudyPatient:
    """Who and which study: the same for every instance written."""

    patient_id: str
    patient_name: str
    accession: str
    study_uid: str
    when: datetime
    sex: str = "F"
    birth_date: str = "19650412"
    charset: str | None = None
    """Specific Character Set; None: ISO_IR 100 when the name fits Latin-1, else ISO_IR 192."""

    @property
    def character_set(self) -> str:
        if self.charset:
            return self.charset
        try:
            self.patient_name.encode("latin-1")
        except UnicodeEncodeError:
            return "ISO_IR 192"
        return "ISO_IR 100"


@dataclass(frozen=True)
class SeriesPlan:
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
    positions: int | None = None
    """Slice positions per volume: instance ``i`` is at slice ``i % positions`` (4D series)."""
    per_instance: Callable[[int], dict[str, Any]] | None = None
    """Tags that change from instance to instance (a time point's trigger time…)."""


# --------------------------------------------------------------------- phantom


class Phantom:
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


# ------------------------------------------------------------------- datasets


def fmt(value: float) -> str:
    """A DS value that fits in 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def derived_uid(*parts: object) -> UID:
    """A UID derived from the given parts: the same parts give the same UID."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
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


def study_dataset(patient: StudyPatient, description: str, station: str) -> Dataset:
    """Patient, study, equipment and SOP common tags shared by every instance."""
    ds = Dataset()
    ds.SpecificCharacterSet = patient.character_set
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


def series_dataset(base: Dataset, patient: StudyPatient, series: SeriesPlan) -> Dataset:
    ds = copy.deepcopy(base)
    when = patient.when
    ds.SOPClassUID = series.sop_class
    ds.Modality = series.modality
    ds.SeriesInstanceUID = derived_uid(patient.study_uid, "series", series.number)
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
    ds.PixelSpacing = [fmt(series.pixel_spacing)] * 2
    if series.orientation is not None:
        ds.FrameOfReferenceUID = derived_uid(patient.study_uid, "frame-of-reference")
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [fmt(v) for v in series.orientation]
        ds.SliceThickness = fmt(series.thickness)
    for keyword, value in series.tags.items():
        setattr(ds, keyword, value)
    ds.file_meta = file_meta(series.sop_class, "", ExplicitVRLittleEndian)
    return ds


def write_series(
    out_dir: Path, patient: StudyPatient, base: Dataset, series: SeriesPlan
) -> list[Path]:
    """Write every instance of one series; one dataset is reused for speed."""
    folder = out_dir / f"S{series.number:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    ds = series_dataset(base, patient, series)
    x0 = -series.columns * series.pixel_spacing / 2
    y0 = -series.rows * series.pixel_spacing / 2
    paths = []
    for index in range(series.instances):
        sop_uid = derived_uid(ds.SeriesInstanceUID, "instance", index + 1)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        if series.orientation is not None:
            z = -(index % (series.positions or series.instances)) * series.thickness
            ds.ImagePositionPatient = [fmt(x0), fmt(y0), fmt(z)]
            ds.SliceLocation = fmt(z)
        if series.per_instance is not None:
            for keyword, value in series.per_instance(index).items():
                setattr(ds, keyword, value)
        ds.PixelData = series.paint(index, series.number).astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        path = folder / f"I{index + 1:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def code_item(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def fixed_view(paint: Callable[[int, int], Pixels], view: int) -> Callable[[int, int], Pixels]:
    """A painter that always paints view ``view`` (each DX view is its own series)."""
    return lambda _index, _series: paint(view, 1)


def sc_tags(frames: int) -> dict[str, Any]:
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
                "SliceLocationVector": [fmt(-i * 1.0) for i in range(frames)],
                "RescaleIntercept": "0",
                "RescaleSlope": "1",
                "RescaleType": "US",
                "PresentationLUTShape": "IDENTITY",
            }
        )
    return tags


#: (study description, station name, series) of one study kind.
StudyPlan = tuple[str, str, list[SeriesPlan]]
