"""The simulated AI products: what each one finds, and the result objects it returns.

Five product kinds, each with the findings a real product of that kind
reports (fixed values, so scenarios can assert on them), written in the JSON
findings schema of :mod:`adapters.results.findings` and turned into DICOM by
radbridge's own builders or highdicom:

========================  =========================================================
``lung-nodule-ct``        two solid pulmonary nodules (diameter, volume, Lung-RADS)
``head-ct-bleed``         intracranial hemorrhage, urgent (volume, midline shift)
``chest-xray``            pneumothorax (urgent); effusion, consolidation and
                          cardiomegaly ruled out
``coronary-cta``          proximal LAD stenosis (percent, CAD-RADS, Agatston score)
``fracture``              distal radius fracture
========================  =========================================================

Codes are SNOMED CT (``SCT``) where the concept has a well-known code
(pulmonary nodule 786838002, intracranial hemorrhage 1386000, pneumothorax
36118008, pleural effusion 60046008, lung consolidation 95436008,
cardiomegaly 8186001, coronary artery stenosis 233970002, fracture of bone
125605004, diameter 81827009, volume 118565006, and the anatomic sites);
measurements without one (midline shift, percent stenosis, CAD-RADS,
Agatston score, Lung-RADS) use the private scheme ``99RADBRIDGE``.

Result objects: :func:`make_sr` (Comprehensive SR, TID 1500, by
:func:`adapters.results.sr.findings_to_sr`), :func:`make_seg` (a binary
SEG of the first finding, highdicom) and :func:`make_sc` (a secondary
capture key image with the finding circled, highdicom).

A simulated product can be told to disagree (``findings``: finding code as
``SYSTEM:VALUE`` → :class:`Presence`): ``absent`` replaces every finding of that
code with one "absent" finding (probability 0.05), ``present`` turns an absent one
present (probability 0.95), so two products of one kind can read one study
differently (radbridge's ``discordant`` flag).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from adapters.results.findings import parse_findings
from adapters.results.sr import SourceInstance, SourceStudy, findings_to_sr
from broker.model import domain


class Presence(enum.StrEnum):
    """What a simulated product says of a finding code, whatever its kind would say."""

    PRESENT = "present"
    ABSENT = "absent"


#: The probability a product gives a finding it was told is present / absent.
PRESENT_SCORE, ABSENT_SCORE = 0.95, 0.05

Overrides = Mapping[str, Presence]
"""Finding code (``SCT:786838002``) → what the product says of it."""


class ProductKind(enum.StrEnum):
    LUNG_NODULE_CT = "lung-nodule-ct"
    HEAD_CT_BLEED = "head-ct-bleed"
    CHEST_XRAY = "chest-xray"
    CORONARY_CTA = "coronary-cta"
    FRACTURE = "fracture"


@dataclass(frozen=True)
class Product:
    """A simulated AI product as its vendor names it."""

    kind: ProductKind
    vendor: str
    name: str
    version: str

    @property
    def algorithm(self) -> dict[str, str]:
        return {"vendor": self.vendor, "product": self.name, "version": self.version}


PRODUCTS = {
    ProductKind.LUNG_NODULE_CT: Product(
        ProductKind.LUNG_NODULE_CT, "LungSim (simulated)", "Lung Nodule CT", "2.4.1"
    ),
    ProductKind.HEAD_CT_BLEED: Product(
        ProductKind.HEAD_CT_BLEED, "NeuroSim (simulated)", "Head CT Bleed Triage", "1.8.0"
    ),
    ProductKind.CHEST_XRAY: Product(
        ProductKind.CHEST_XRAY, "CXRSim (simulated)", "Chest X-ray Triage", "3.0.2"
    ),
    ProductKind.CORONARY_CTA: Product(
        ProductKind.CORONARY_CTA, "HeartSim (simulated)", "Coronary CTA", "1.2.0"
    ),
    ProductKind.FRACTURE: Product(
        ProductKind.FRACTURE, "BoneSim (simulated)", "Fracture Detection", "2.1.0"
    ),
}

PRIVATE = "99RADBRIDGE"


def _code(system: str, value: str, meaning: str) -> dict[str, str]:
    return {"system": system, "value": value, "meaning": meaning}


def _m(code: dict[str, str], value: float, unit: str) -> dict[str, Any]:
    return {"code": code, "value": value, "unit": unit}


DIAMETER = _code("SCT", "81827009", "Diameter")
VOLUME = _code("SCT", "118565006", "Volume")


def _findings(kind: ProductKind) -> tuple[str, list[dict[str, Any]]]:
    """(summary, findings without references) of one product kind."""
    if kind is ProductKind.LUNG_NODULE_CT:
        return (
            "2 solid pulmonary nodules; largest 8.2 mm in the right upper lobe (Lung-RADS 4A).",
            [
                {
                    "code": _code("SCT", "786838002", "Pulmonary nodule"),
                    "present": True,
                    "score": 0.94,
                    "text": "Solid nodule, right upper lobe. Lung-RADS 4A.",
                    "site": _code("SCT", "42400003", "Upper lobe of right lung"),
                    "measurements": [
                        _m(DIAMETER, 8.2, "mm"),
                        _m(VOLUME, 290.5, "mm3"),
                        _m(_code(PRIVATE, "LUNGRADS", "Lung-RADS category"), 4, "1"),
                    ],
                },
                {
                    "code": _code("SCT", "786838002", "Pulmonary nodule"),
                    "present": True,
                    "score": 0.71,
                    "text": "Solid nodule, left lower lobe. Lung-RADS 2.",
                    "site": _code("SCT", "41224006", "Lower lobe of left lung"),
                    "measurements": [_m(DIAMETER, 4.1, "mm"), _m(VOLUME, 36.1, "mm3")],
                },
            ],
        )
    if kind is ProductKind.HEAD_CT_BLEED:
        return (
            "Suspected intracranial hemorrhage, left frontal, 12.4 mL; urgent review.",
            [
                {
                    "code": _code("SCT", "1386000", "Intracranial hemorrhage"),
                    "present": True,
                    "score": 0.97,
                    "urgent": True,
                    "text": "Intraparenchymal hemorrhage, left frontal lobe.",
                    "site": _code("SCT", "12738006", "Brain"),
                    "measurements": [
                        _m(VOLUME, 12.4, "mL"),
                        _m(_code(PRIVATE, "MLS", "Midline shift"), 3.1, "mm"),
                    ],
                }
            ],
        )
    if kind is ProductKind.CHEST_XRAY:
        return (
            "Right apical pneumothorax; urgent review.",
            [
                {
                    "code": _code("SCT", "36118008", "Pneumothorax"),
                    "present": True,
                    "score": 0.88,
                    "urgent": True,
                    "text": "Right apical pneumothorax, rim about 2 cm.",
                },
                {
                    "code": _code("SCT", "60046008", "Pleural effusion"),
                    "present": False,
                    "score": 0.04,
                },
                {
                    "code": _code("SCT", "95436008", "Lung consolidation"),
                    "present": False,
                    "score": 0.12,
                },
                {"code": _code("SCT", "8186001", "Cardiomegaly"), "present": False, "score": 0.09},
            ],
        )
    if kind is ProductKind.CORONARY_CTA:
        return (
            "Moderate stenosis of the proximal LAD (50-69 %), CAD-RADS 3; Agatston score 142.",
            [
                {
                    "code": _code("SCT", "233970002", "Coronary artery stenosis"),
                    "present": True,
                    "score": 0.9,
                    "text": "Mixed plaque, proximal left anterior descending artery.",
                    "site": _code(PRIVATE, "LAD-PROX", "Proximal LAD"),
                    "measurements": [
                        _m(_code(PRIVATE, "STENOSIS", "Diameter stenosis"), 55, "%"),
                        _m(_code(PRIVATE, "CADRADS", "CAD-RADS category"), 3, "1"),
                        _m(_code(PRIVATE, "AGATSTON", "Agatston score"), 142, "1"),
                    ],
                }
            ],
        )
    return (
        "Distal radius fracture.",
        [
            {
                "code": _code("SCT", "125605004", "Fracture of bone"),
                "present": True,
                "score": 0.86,
                "text": "Distal radius fracture, dorsally angulated.",
                "site": _code("SCT", "62413002", "Radius"),
            }
        ],
    )


def finding_codes(kind: ProductKind) -> list[str]:
    """The finding codes a product of ``kind`` reports, as ``SYSTEM:VALUE``."""
    _summary, findings = _findings(kind)
    return list(dict.fromkeys(f"{f['code']['system']}:{f['code']['value']}" for f in findings))


def _overridden(findings: list[dict[str, Any]], overrides: Overrides) -> list[dict[str, Any]]:
    """``findings`` as told by ``overrides`` (see the module docstring)."""
    out: list[dict[str, Any]] = []
    done: set[str] = set()
    for finding in findings:
        key = f"{finding['code']['system']}:{finding['code']['value']}"
        told = overrides.get(key)
        if told is Presence.ABSENT:
            if key not in done:
                out.append({"code": finding["code"], "present": False, "score": ABSENT_SCORE})
                done.add(key)
        elif told is Presence.PRESENT and not finding["present"]:
            out.append(finding | {"present": True, "score": PRESENT_SCORE})
        else:
            out.append(finding)
    return out


def key_instance(source: SourceStudy) -> SourceInstance:
    """The instance a finding points at: the middle one of the largest series."""
    by_series: dict[str, list[SourceInstance]] = {}
    for instance in source.instances:
        by_series.setdefault(instance.series_uid, []).append(instance)
    largest = max(by_series.values(), key=len)
    return largest[len(largest) // 2]


def other_study_uid(study_uid: str) -> str:
    """A study UID that is not ``study_uid`` (the wrong-study-uid fault)."""
    return str(generate_uid(entropy_srcs=["radbridge-harness-wrong-study", study_uid]))


def findings_document(
    kind: ProductKind,
    source: SourceStudy,
    *,
    study_uid: str | None = None,
    overrides: Overrides | None = None,
) -> dict[str, Any]:
    """The JSON findings a product of ``kind`` returns for ``source`` (the wire schema).

    ``study_uid`` replaces the evaluated study's UID (to simulate a vendor
    that answers for the wrong study); ``overrides`` changes what it says of a code.
    """
    summary, findings = _findings(kind)
    if overrides:
        findings = _overridden(findings, overrides)
        summary = f"{summary} (findings overridden: {', '.join(sorted(overrides))})"
    key = key_instance(source)
    for finding in findings:
        if finding["present"]:
            finding["references"] = [
                {"series_instance_uid": key.series_uid, "sop_instance_uid": key.sop_instance_uid}
            ]
    return {
        "study_instance_uid": study_uid or source.study_uid,
        "algorithm": PRODUCTS[kind].algorithm,
        "complete": True,
        "summary": summary,
        "findings": findings,
    }


def findings_for(
    kind: ProductKind, source: SourceStudy, overrides: Overrides | None = None
) -> domain.Findings:
    """The findings as radbridge's domain type (validated by radbridge's own parser)."""
    document = findings_document(kind, source, overrides=overrides)
    return parse_findings(json.dumps(document).encode())


def make_sr(
    kind: ProductKind,
    source: SourceStudy,
    *,
    result_id: str,
    study_uid: str | None = None,
    images: list[Dataset] | None = None,
    overrides: Overrides | None = None,
) -> Dataset:
    """The product's Comprehensive SR (TID 1500) in ``source``'s study (or in ``study_uid``).

    With the received ``images``, the first finding's group also outlines it on the key
    instance: an Image Region (DCM 111030), a CIRCLE of a tenth of the image around its
    centre, as products that mark what they found do.
    """
    found = findings_for(kind, source, overrides)
    sr = findings_to_sr(found, source, result_id=result_id)
    key = key_instance(source)
    ref = next((ds for ds in images or [] if str(ds.SOPInstanceUID) == key.sop_instance_uid), None)
    if ref is not None and found.findings and found.findings[0].present:
        rows, columns = int(ref.Rows), int(ref.Columns)
        centre = (columns / 2, rows / 2)
        radius = max(min(rows, columns) / 10, 2.0)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
            graphic_data=np.array([centre, (centre[0] + radius, centre[1])]),
            source_image=hd.sr.SourceImageForRegion(key.sop_class_uid, key.sop_instance_uid),
        )
        report = sr.ContentSequence
        groups = next(i for i in report if i.ConceptNameCodeSequence[0].CodeValue == "126010")
        groups.ContentSequence[0].ContentSequence.append(region)
    if study_uid is not None:
        sr.StudyInstanceUID = study_uid
    return sr


def _series_images(images: list[Dataset], key: SourceInstance) -> list[Dataset]:
    series = [ds for ds in images if str(ds.SeriesInstanceUID) == key.series_uid]
    return sorted(series, key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))


def _disk(rows: int, columns: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    y, x = np.mgrid[0:rows, 0:columns]
    radius = max(min(rows, columns) // 10, 2)
    mask: np.ndarray[Any, np.dtype[np.bool_]] = (y - rows // 2) ** 2 + (
        x - columns // 2
    ) ** 2 <= radius**2
    return mask


def make_seg(
    kind: ProductKind,
    source: SourceStudy,
    images: list[Dataset],
    *,
    study_uid: str | None = None,
) -> Dataset:
    """A binary SEG of the first finding on the key series (a disk on its middle third).

    ``images`` are the received instances with their pixel data.
    """
    product = PRODUCTS[kind]
    key = key_instance(source)
    series = _series_images(images, key)
    rows, columns = int(series[0].Rows), int(series[0].Columns)
    mask = np.zeros((len(series), rows, columns), dtype=bool)
    low, high = len(series) // 3, max(len(series) * 2 // 3, len(series) // 3 + 1)
    mask[low:high] = _disk(rows, columns)
    _summary, findings = _findings(kind)
    first = findings[0]["code"]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=first["meaning"][:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=hd.sr.CodedConcept(
            first["value"], first["system"], first["meaning"]
        ),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=product.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=product.version,
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=series,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=product.vendor,
        manufacturer_model_name=product.name,
        software_versions=product.version,
        device_serial_number="SIM-0001",
        series_description=f"AI result, not a diagnosis: {product.name}"[:64],
        omit_empty_frames=False,
    )
    if study_uid is not None:
        seg.StudyInstanceUID = study_uid
    return seg


def make_sc(
    kind: ProductKind,
    source: SourceStudy,
    images: list[Dataset],
    *,
    study_uid: str | None = None,
) -> Dataset:
    """A secondary capture key image: the key instance in grey with the finding circled in red
    (the key instance in its Source Image Sequence)."""
    product = PRODUCTS[kind]
    key = key_instance(source)
    ref = next(ds for ds in images if str(ds.SOPInstanceUID) == key.sop_instance_uid)
    pixels = ref.pixel_array.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    grey = ((pixels - low) / max(high - low, 1.0) * 255).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rows, columns = grey.shape
    y, x = np.mgrid[0:rows, 0:columns]
    radius = max(min(rows, columns) // 10, 2)
    distance = np.hypot(y - rows // 2, x - columns // 2)
    rgb[(distance <= radius + 1) & (distance >= radius - 1)] = (255, 0, 0)  # a 2-3 pixel ring
    orientation = ref.get("PatientOrientation") or ["L", "P"]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=hd.UID(),
        series_number=9902,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=product.vendor,
        patient_orientation=(str(orientation[0]), str(orientation[1])),
        series_description=f"AI result, not a diagnosis: {product.name}"[:64],
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.BurnedInAnnotation = "YES"
    sc.ManufacturerModelName = product.name
    sc.SoftwareVersions = product.version
    made_from = Dataset()
    made_from.ReferencedSOPClassUID = ref.SOPClassUID
    made_from.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = [made_from]
    if study_uid is not None:
        sc.StudyInstanceUID = study_uid
    return sc
