"""Mammography: a screening study of four views (R CC, L CC, R MLO, L MLO), For Presentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydicom.sequence import Sequence

from adapters.dicom.synthetic.common import (
    MG_PRESENTATION_STORAGE,
    Phantom,
    Pixels,
    SeriesPlan,
    StudyPlan,
    code_item,
    fixed_view,
    fmt,
)

#: (laterality, view position, SNOMED CT view code, its meaning, patient orientation)
VIEWS = (
    ("R", "CC", "399162004", "cranio-caudal", ["P", "L"]),
    ("L", "CC", "399162004", "cranio-caudal", ["A", "R"]),
    ("R", "MLO", "399368009", "medio-lateral oblique", ["P", "F"]),
    ("L", "MLO", "399368009", "medio-lateral oblique", ["A", "F"]),
)


def mg_painter(rows: int, columns: int) -> Callable[[int, int], Pixels]:
    """A breast against the detector edge (left for R views, right for L), with a mass."""
    ph = Phantom(rows, columns, seed=17)
    breast_left = ph.ellipse(-1.0, 0.0, 1.2, 0.85)
    breast_right = ph.ellipse(1.0, 0.0, 1.2, 0.85)
    mass = ph.ellipse(-0.55, -0.2, 0.04, 0.05)
    glandular = (np.sin(ph.x * 25.0) * np.sin(ph.y * 19.0) > 0.3).astype(np.uint16) * 250

    def paint(index: int, _series: int) -> Pixels:
        right = VIEWS[index % len(VIEWS)][0] == "R"
        breast = breast_left if right else breast_right
        img = np.full((rows, columns), 80, dtype=np.uint16)  # direct exposure: black
        inside = breast < 1.0
        img[inside] = 1500  # fat
        img[inside] += glandular[inside]  # fibroglandular strands
        if right and index % len(VIEWS) == 0:
            img[mass < 1.0] = 2600  # a dense mass in the right breast, CC view
        img += ph.texture(index)
        return img

    return paint


def plan_mg(instances: int | None, rows: int | None, columns: int | None) -> StudyPlan:
    """One series per view (default the four screening views at 3328x2560, 0.065 mm)."""
    count = instances if instances is not None else 4
    r, c = rows or 3328, columns or 2560
    spacing = 0.065 * 2560 / c
    paint = mg_painter(r, c)
    series_list = []
    for index in range(count):
        laterality, position, code, meaning, orientation = VIEWS[index % len(VIEWS)]
        view = code_item(code, meaning)
        view.ViewModifierCodeSequence = Sequence()
        tags: dict[str, Any] = {
            "ImageType": ["ORIGINAL", "PRIMARY"],
            "BodyPartExamined": "BREAST",
            "ProtocolName": "Screening mammography 4 views",
            "Manufacturer": "HOLOGIC, Inc.",
            "ManufacturerModelName": "Selenia Dimensions",
            "PresentationIntentType": "FOR PRESENTATION",
            "ImageLaterality": laterality,
            "OrganExposed": "BREAST",
            "ViewPosition": position,
            "PatientOrientation": orientation,
            "ImagerPixelSpacing": [fmt(spacing)] * 2,
            "DetectorType": "DIRECT",
            "PositionerType": "MAMMOGRAPHIC",
            "KVP": "29",
            "ExposureTime": 1100,
            "XRayTubeCurrent": 110,
            "AnodeTargetMaterial": "TUNGSTEN",
            "FilterMaterial": "RHODIUM",
            "BodyPartThickness": "52",
            "CompressionForce": "98",
            "BreastImplantPresent": "NO",
            "PartialView": "NO",
            "DistanceSourceToDetector": "700",
            "PixelIntensityRelationship": "LOG",
            "PixelIntensityRelationshipSign": -1,
            "RescaleIntercept": "0",
            "RescaleSlope": "1",
            "RescaleType": "US",
            "PresentationLUTShape": "IDENTITY",
            "BurnedInAnnotation": "NO",
            "AcquisitionContextSequence": Sequence(),
            "AnatomicRegionSequence": Sequence([code_item("76752008", "Breast")]),
            "ViewCodeSequence": Sequence([view]),
            "WindowCenter": "2047",
            "WindowWidth": "4096",
        }
        series_list.append(
            SeriesPlan(
                number=71 + index,
                modality="MG",
                sop_class=MG_PRESENTATION_STORAGE,
                description=f"{laterality} {position}",
                rows=r,
                columns=c,
                instances=1,
                pixel_spacing=spacing,
                thickness=0.0,
                paint=fixed_view(paint, index),
                tags=tags,
                orientation=None,
            )
        )
    return "MG SCREENING BILATERAL", "MG01", series_list
