"""A study of a given total size, streamed to disk."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydicom import dcmwrite
from pydicom.uid import (
    generate_uid,
)

from adapters.dicom.synthetic.common import (
    MF_GRAYSCALE_WORD_SC_STORAGE,
    MIB,
    SeriesPlan,
    StudyPatient,
    derived_uid,
    sc_tags,
    series_dataset,
    study_dataset,
)
from adapters.dicom.synthetic.ct import ct_chest_painter
from broker.model.errors import DicomError


def _explicit_le_header(tag: int, vr: str, length: int) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    head = group.to_bytes(2, "little") + element.to_bytes(2, "little") + vr.encode("ascii")
    return head + b"\x00\x00" + length.to_bytes(4, "little")


def generate_large_study(
    out_dir: Path | str,
    total_bytes: int,
    instance_bytes: int = 64 * MIB,
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
    patient = StudyPatient(
        patient_id=patient_id,
        patient_name=patient_name,
        accession=accession,
        study_uid=study_uid or str(generate_uid()),
        when=datetime.now().replace(microsecond=0),
    )
    paint = ct_chest_painter(side, side, frames)
    series = SeriesPlan(
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
        tags=sc_tags(frames),
    )
    ds = series_dataset(study_dataset(patient, "CT CHEST LARGE VOLUME", "CT01"), patient, series)
    frame_cache = [paint(i, 1).astype("<u2").tobytes() for i in range(min(frames, 16))]
    paths = []
    for index in range(count):
        sop_uid = derived_uid(ds.SeriesInstanceUID, "instance", index + 1)
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
