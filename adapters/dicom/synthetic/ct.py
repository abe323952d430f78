"""CT studies: chest (thin-slice), head, coronary CT angiography and 4D head perfusion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from adapters.dicom.synthetic.common import (
    CT_IMAGE_STORAGE,
    Phantom,
    Pixels,
    SeriesPlan,
    StudyPlan,
    fmt,
)


def ct_chest_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = Phantom(rows, columns)
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


def ct_head_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    ph = Phantom(rows, columns)
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


def ct_tags(kind: str, thickness: float) -> dict[str, Any]:
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
        "SpacingBetweenSlices": fmt(thickness),
        "RescaleIntercept": "-1024",
        "RescaleSlope": "1",
        "RescaleType": "HU",
        "WindowCenter": ["40", "-600"] if chest else "40",
        "WindowWidth": ["400", "1500"] if chest else "80",
    }


def ct_ccta_painter(rows: int, columns: int, count: int) -> Callable[[int, int], Pixels]:
    """The heart in a small field of view, with contrast in the chambers and coronaries."""
    ph = Phantom(rows, columns, seed=11)
    body = ph.ellipse(0.0, 0.1, 1.6, 1.1)
    heart = ph.ellipse(0.0, 0.0, 0.62, 0.55)
    lv = ph.ellipse(0.18, 0.05, 0.22, 0.2)
    rv = ph.ellipse(-0.2, -0.1, 0.2, 0.16)
    aorta = ph.ellipse(-0.05, -0.45, 0.12, 0.12)
    lad = ph.ellipse(0.05, -0.3, 0.025, 0.025)
    rca = ph.ellipse(-0.45, 0.05, 0.025, 0.025)
    lcx = ph.ellipse(0.45, -0.15, 0.025, 0.025)
    plaque = ph.ellipse(0.06, -0.29, 0.012, 0.012)

    def paint(index: int, _series: int) -> Pixels:
        z = index / max(count - 1, 1)  # 0 = aortic root, 1 = cardiac apex
        img = np.full((rows, columns), 174, dtype=np.uint16)  # lung, -850 HU
        img[body >= 1.0] = 1064
        img[heart < 1.0 - 0.3 * z] = 1084  # myocardium, 60 HU
        img[(lv < 1.0 - 0.5 * z) | (rv < 1.0 - 0.5 * z)] = 1424  # contrast, 400 HU
        if z < 0.2:
            img[aorta < 1.0] = 1474
        img[(lad < 1.0) | (rca < 1.0) | (lcx < 1.0)] = 1374  # coronaries, 350 HU
        if 0.3 < z < 0.4:
            img[plaque < 1.0] = 1904  # calcified plaque, 880 HU
        img += ph.texture(index)
        return img

    return paint


def ct_perfusion_painter(
    rows: int, columns: int, slices: int, time_points: int
) -> Callable[[int, int], Pixels]:
    """Head slices whose brain and vessels enhance and wash out over the time points."""
    head = ct_head_painter(rows, columns, slices)
    ph = Phantom(rows, columns, seed=13)
    mca_r = ph.ellipse(-0.35, 0.0, 0.04, 0.04)
    mca_l = ph.ellipse(0.35, 0.0, 0.04, 0.04)
    brain = ph.ellipse(0.0, 0.0, 0.6, 0.75)
    infarct = ph.ellipse(0.35, 0.1, 0.18, 0.22)

    def paint(index: int, series: int) -> Pixels:
        position, time = index % slices, index // slices
        t = time / max(time_points - 1, 1)
        # a gamma-variate bolus: arrives at ~20 % of the scan, peaks at ~35 %, washes out
        bolus = float(max(t - 0.2, 0.0) / 0.15 * np.exp(1.0 - max(t - 0.2, 0.0) / 0.15))
        img = head(position, series)
        img[(mca_r < 1.0) | (mca_l < 1.0)] += np.uint16(300 * bolus)  # arteries: 300 HU peak
        tissue = (brain < 1.0) & ~(infarct < 1.0)  # the left MCA territory stays dark
        img[tissue] += np.uint16(30 * bolus)
        return img

    return paint


def _ct_series(
    kind: str, instances: int | None, rows: int | None, columns: int | None
) -> SeriesPlan:
    r, c = rows or 512, columns or 512
    if kind == "ct_ccta":
        count = instances if instances is not None else 256
        tags = ct_tags("ct_chest", 0.625) | {
            "BodyPartExamined": "HEART",
            "ProtocolName": "Cardiac CTA prospective 75%",
            "ConvolutionKernel": "STANDARD",
            "ReconstructionDiameter": "200",
            "ScanOptions": ["AXIAL MODE", "CARDIAC GATING"],
            "XRayTubeCurrent": 550,
            "ExposureTime": 280,
            "KVP": "100",
            "ContrastBolusAgent": "Iopromide 370 mgI/ml",
            "ContrastBolusRoute": "IV",
            "ContrastBolusVolume": "70",
            "ContrastFlowRate": "5",
            "HeartRate": 62,
            "TriggerTime": "725",
            "NominalPercentageOfCardiacPhase": 75.0,
            "CardiacNumberOfImages": count,
            "BeatRejectionFlag": "N",
            "WindowCenter": "300",
            "WindowWidth": "800",
        }
        return SeriesPlan(
            number=4,
            modality="CT",
            sop_class=CT_IMAGE_STORAGE,
            description="Cor 0.625mm 75% CTA",
            rows=r,
            columns=c,
            instances=count,
            pixel_spacing=200.0 / c,
            thickness=0.625,
            paint=ct_ccta_painter(r, c, count),
            tags=tags,
        )
    if kind == "ct_perfusion":
        time_points = instances if instances is not None else 30
        slices = PERFUSION_SLICES
        interval = 1.5  # seconds between time points
        tags = ct_tags("ct_head", 5.0) | {
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL", "CINE"],
            "ProtocolName": "Brain perfusion 4D 80mm",
            "ScanOptions": ["AXIAL MODE", "CINE MODE"],
            "KVP": "80",
            "XRayTubeCurrent": 150,
            "ExposureTime": 1000,
            "ContrastBolusAgent": "Iohexol 350 mgI/ml",
            "ContrastBolusRoute": "IV",
            "ContrastBolusVolume": "40",
            "ContrastFlowRate": "5",
            "NumberOfTemporalPositions": time_points,
            "TemporalResolution": fmt(interval * 1000),
        }

        def per_instance(index: int) -> dict[str, Any]:
            time = index // slices
            return {
                "TemporalPositionIdentifier": time + 1,
                "AcquisitionNumber": time + 1,
                "TriggerTime": fmt(time * interval * 1000),
            }

        return SeriesPlan(
            number=5,
            modality="CT",
            sop_class=CT_IMAGE_STORAGE,
            description="Perfusion 5mm 4D",
            rows=r,
            columns=c,
            instances=time_points * slices,
            pixel_spacing=240.0 / c,
            thickness=5.0,
            paint=ct_perfusion_painter(r, c, slices, time_points),
            tags=tags,
            positions=slices,
            per_instance=per_instance,
        )
    chest = kind == "ct_chest"
    count = instances if instances is not None else (200 if chest else 32)
    thickness = 1.0 if chest else 5.0
    paint = (ct_chest_painter if chest else ct_head_painter)(r, c, count)
    return SeriesPlan(
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
        tags=ct_tags(kind, thickness),
    )


#: Slice positions per time point of ``ct_perfusion`` (16 x 5 mm = 80 mm coverage).
PERFUSION_SLICES = 16

_DESCRIPTIONS = {
    "ct_chest": "CT CHEST WITHOUT CONTRAST",
    "ct_head": "CT HEAD WITHOUT CONTRAST",
    "ct_ccta": "CT CORONARY ANGIOGRAPHY",
    "ct_perfusion": "CT PERFUSION HEAD",
    "ct_stroke": "CT STROKE PROTOCOL",
}

#: Tags of a gated cardiac CTA that a head and neck CTA has not.
_CARDIAC = frozenset(
    {
        "NominalPercentageOfCardiacPhase",
        "CardiacNumberOfImages",
        "HeartRate",
        "TriggerTime",
        "BeatRejectionFlag",
    }
)


def plan_stroke(instances: int | None, rows: int | None, columns: int | None) -> StudyPlan:
    """A stroke protocol: non-contrast head CT (``instances`` slices, default 32), CTA of the
    head and neck (twice as many) and perfusion (``instances // 8`` time points, at least
    2, of 16 slices): three series of one study."""
    count = instances if instances is not None else 32
    head = _ct_series("ct_head", count, rows, columns)
    angio = _ct_series("ct_ccta", 2 * count, rows, columns)
    cta_tags = {k: v for k, v in angio.tags.items() if k not in _CARDIAC}
    cta_tags |= {
        "BodyPartExamined": "HEAD",
        "ProtocolName": "CTA head and neck",
        "ScanOptions": ["HELICAL MODE"],
        "ReconstructionDiameter": "220",
    }
    angio = replace(angio, description="CTA head neck 0.625mm", tags=cta_tags)
    perfusion = _ct_series("ct_perfusion", max(2, count // 8), rows, columns)
    return _DESCRIPTIONS["ct_stroke"], "CT01", [head, angio, perfusion]


def plan_ct(kind: str, instances: int | None, rows: int | None, columns: int | None) -> StudyPlan:
    """One CT series of ``kind`` (``ct_chest``, ``ct_head``, ``ct_ccta``, ``ct_perfusion``),
    or the three of ``ct_stroke``."""
    if kind == "ct_stroke":
        return plan_stroke(instances, rows, columns)
    return _DESCRIPTIONS[kind], "CT01", [_ct_series(kind, instances, rows, columns)]
