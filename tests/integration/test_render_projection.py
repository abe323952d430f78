"""Renderings of a radiograph's segmentation: highdicom refuses to read a SEG without Slice
Thickness, which PS3.3 asks only of volumes; radbridge still draws it, and a SEG it cannot
read at all leaves the rest of the renderings made and says why."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from adapters.dicom.synthetic import generate_study
from adapters.harness.products import ProductKind, make_seg
from adapters.results.render.make import render
from adapters.results.render.settings import Rendering
from adapters.results.sr import SourceStudy
from broker.model.domain import Result, ResultObject, ResultOrigin, ResultState
from tests.peers import ensure_cjk_font


def _result(tmp_path: Path, objects: list[Dataset], study_uid: str) -> Result:
    stored = []
    for ds in objects:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        stored.append(
            ResultObject(
                str(ds.SOPInstanceUID),
                str(ds.SOPClassUID),
                str(ds.SeriesInstanceUID),
                study_uid,
                str(path),
                path.stat().st_size,
                ResultOrigin.DICOM,
            )
        )
    now = datetime.now(UTC)
    return Result(
        id=1,
        job_id=1,
        study_uid=study_uid,
        vendor="cxr",
        state=ResultState.COMPLETE,
        urgent=False,
        findings=None,
        objects=tuple(stored),
        expected_objects=None,
        created_at=now,
        updated_at=now,
        completed_at=now,
    )


def test_a_radiograph_seg_is_drawn_and_an_unreadable_one_is_named(tmp_path: Path) -> None:
    """A SEG of a chest radiograph (no Slice Thickness) gives a KOS of the radiograph and an
    overlay with the segment drawn in colour; a SEG whose frames cannot be read is named in
    what was skipped while the summary page is still made."""
    ensure_cjk_font()
    files = generate_study("dx_chest", tmp_path / "dx", instances=1, rows=128, columns=128)
    images = [pydicom.dcmread(f) for f in files]
    source = SourceStudy.from_datasets(images)
    seg = make_seg(ProductKind.CHEST_XRAY, source, images)
    assert "SliceThickness" not in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    made = render(
        _result(tmp_path, [seg], source.study_uid),
        [str(f) for f in files],
        [Rendering.KOS, Rendering.SEG_OVERLAY],
        language="en",
    )
    kos, overlay = made.datasets
    assert kos.Modality == "KO" and made.skipped == []
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == images[0].SOPInstanceUID
    pixels = overlay.pixel_array.astype(int)
    assert ((pixels[..., 0] - pixels[..., 1]) > 100).sum() > 20  # the red outline and fill

    del seg.SharedFunctionalGroupsSequence  # now unreadable as a SEG
    seg.SOPInstanceUID = pydicom.uid.generate_uid()
    made = render(
        _result(tmp_path, [seg], source.study_uid),
        [str(f) for f in files],
        [Rendering.SC_SUMMARY, Rendering.SEG_OVERLAY],
        language="en",
    )
    assert [ds.Modality for ds in made.datasets] == ["OT"]  # the summary page
    assert made.skipped[0] == f"cannot read the segmentation {seg.SOPInstanceUID}"
