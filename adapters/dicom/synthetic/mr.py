"""MR studies: brain (T1, T2, FLAIR and post-contrast T1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from adapters.dicom.synthetic.common import (
    MR_IMAGE_STORAGE,
    Phantom,
    Pixels,
    SeriesPlan,
    StudyPlan,
)

# (white matter, grey matter, CSF, fat) per weighting
_MR_CONTRAST = {
    "T1": (900, 600, 200, 1400),
    "T2": (500, 700, 1800, 900),
    "FLAIR": (600, 800, 100, 700),
    "T1C": (900, 620, 220, 1400),
}


def _mr_brain_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = Phantom(rows, columns)
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


def plan_mr(instances: int | None, rows: int | None, columns: int | None) -> StudyPlan:
    """Four brain series of ``instances`` slices each (default 24 at 256x256)."""
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
        SeriesPlan(
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
