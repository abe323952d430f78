"""Projection radiography: chest X-ray (DX, For Presentation), PA and lateral views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from adapters.dicom.synthetic.common import (
    DX_PRESENTATION_STORAGE,
    Phantom,
    Pixels,
    SeriesPlan,
    StudyPlan,
    code_item,
    fixed_view,
    fmt,
)


def _dx_chest_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = Phantom(rows, columns)
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


def _view_code(view: str) -> Dataset:
    item = (
        code_item("272479007", "postero-anterior")
        if view == "PA"
        else code_item("399173006", "left lateral")
    )
    item.ViewModifierCodeSequence = Sequence()
    return item


def plan_dx(instances: int | None, rows: int | None, columns: int | None) -> StudyPlan:
    """One series per view, PA and lateral in turn (default 2 views at 2048x2048)."""
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
            "ImagerPixelSpacing": [fmt(430.0 / c)] * 2,
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
            "AnatomicRegionSequence": Sequence([code_item("43799004", "Chest")]),
            "ViewCodeSequence": Sequence([_view_code(view)]),
            "WindowCenter": "2048",
            "WindowWidth": "4096",
        }
        series_list.append(
            SeriesPlan(
                number=index + 1,
                modality="DX",
                sop_class=DX_PRESENTATION_STORAGE,
                description=f"Chest {view}",
                rows=r,
                columns=c,
                instances=1,
                pixel_spacing=430.0 / c,
                thickness=0.0,
                paint=fixed_view(paint, index),
                tags=tags,
                orientation=None,
            )
        )
    return "XR CHEST 2 VIEWS", "DX01", series_list
