"""What a rendering shows, read from a result and the study it was made from.

:func:`read_content` gathers, once per delivery, everything the renderings
need: the AI product (from the findings, else from the headers of the
vendor's objects), the findings table, the key images with their marks, the
segmentations, and the header of the source study (patient and study
attributes for the objects radbridge makes).

Key images come from every kind of result:

- a SEG: per segment, the referenced image where the segment is largest,
  with every segment of that image drawn on it (read with highdicom);
- findings (JSON, or read from the vendor's SR): the images the findings
  reference, with the spatial coordinates (SCOORD) the vendor's SR gives on
  them drawn (:func:`regions`); JSON findings carry no coordinates;
- a secondary capture from the vendor: the vendor's image itself (its marks
  are burned in), and the image it was made from (Source Image Sequence) as
  the key image of the original study.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from adapters.results.render import words
from adapters.results.render.marks import (
    Mask,
    Rgb,
    display_rgb,
    draw_graphic,
    draw_mask,
    fit,
)
from broker.model.domain import AlgorithmInfo, Finding, Result
from broker.model.errors import ResultError
from broker.runtime.results import SR_CLASSES

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Secondary capture storage classes (single and multi-frame).
SC_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
Translate = Callable[[str], str]
Covered = tuple[str, list[tuple[int, Mask]], tuple[str, ...]]
"""(source image UID, [(segment number, its mask on that image)], segment labels)."""
#: Longest side of a key image on the page (a page is 1024 pixels wide).
KEY_IMAGE_PIXELS = 1024
#: The most key images one summary shows.
MAX_KEY_IMAGES = 6


@dataclass(frozen=True, slots=True)
class KeyImage:
    """An image the result points at, as the summary page shows it (at most
    :data:`KEY_IMAGE_PIXELS` on its longer side).

    ``reference`` is the header of the image in the original study (for the
    KOS), None when the image is the vendor's own object only.
    """

    pixels: Rgb
    caption: str
    reference: Dataset | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixels", fit(self.pixels, KEY_IMAGE_PIXELS))


@dataclass(frozen=True, slots=True)
class Overlay:
    """One image of the original study with segments drawn on it (``seg_overlay``)."""

    source: Dataset
    pixels: Rgb
    labels: tuple[str, ...]


@dataclass(slots=True)
class Content:
    """Everything the renderings of one result show (see the module docstring)."""

    result: Result
    algorithm: AlgorithmInfo
    findings: tuple[Finding, ...]
    summary: str | None
    study: Dataset
    """The header of the first source image: patient and study attributes."""
    key_images: list[KeyImage] = field(default_factory=list)
    segmentations: list[hd.seg.Segmentation] = field(default_factory=list)
    segment_rows: list[tuple[str, str]] = field(default_factory=list)
    """(segment label, segmented property) of each segment of each SEG."""
    headers: dict[str, Dataset] = field(default_factory=dict)
    """Source headers by SOP Instance UID."""
    paths: dict[str, str] = field(default_factory=dict)
    """Source file paths by SOP Instance UID."""
    problems: list[str] = field(default_factory=list)
    """What of the result could not be shown (the rest still is)."""

    def image(self, sop_instance_uid: str) -> Dataset:
        """The source image with its pixels."""
        return pydicom.dcmread(self.paths[sop_instance_uid])

    def overlays(self) -> list[Overlay]:
        """Each source image that a segment covers, with every segment drawn on it."""
        out: list[Overlay] = []
        for seg in self.segmentations:
            for uid, masks, labels in _segmented(seg, self.headers):
                rgb = display_rgb(self.image(uid))
                for number, mask in masks:
                    rgb = draw_mask(rgb, mask, number)
                out.append(Overlay(self.headers[uid], rgb, labels))
        return out


@dataclass(frozen=True, slots=True)
class Region:
    """A spatial coordinate of an SR on one image: SCOORD Graphic Type and Graphic Data."""

    graphic_type: str
    points: tuple[float, ...]


def regions(sr: Dataset) -> dict[str, list[Region]]:
    """The SCOORD items of an SR's content tree by the SOP Instance UID they are selected
    from (the IMAGE item under each, PS3.3 C.18.6)."""
    found: dict[str, list[Region]] = {}

    def walk(items: Sequence[Dataset], depth: int) -> None:
        for item in items:
            if item.get("ValueType") == "SCOORD" and "GraphicData" in item:
                region = Region(
                    str(item.get("GraphicType", "")), tuple(float(v) for v in item.GraphicData)
                )
                for child in item.get("ContentSequence", []):
                    for ref in child.get("ReferencedSOPSequence", []):
                        uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                        found.setdefault(uid, []).append(region)
            if depth < 32:
                walk(item.get("ContentSequence", []), depth + 1)

    walk(sr.get("ContentSequence", []), 0)
    return found


def _read(path: str, *, pixels: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (OSError, InvalidDicomError) as exc:
        raise ResultError(f"cannot read {Path(path).name}: {exc}") from exc


def _segmented(seg: hd.seg.Segmentation, headers: dict[str, Dataset]) -> list[Covered]:
    """(source UID, [(segment number, mask)], labels) of each source image a segment covers."""
    numbers = list(seg.get_segment_numbers())
    uids = [str(uid) for _study, _series, uid in seg.get_source_image_uids() if uid in headers]
    out: list[Covered] = []
    for uid in uids:
        stack = seg.get_pixels_by_source_instance(
            [uid], segment_numbers=numbers, ignore_spatial_locations=True
        )[0]
        masks = [(n, stack[..., i] > 0) for i, n in enumerate(numbers) if stack[..., i].any()]
        if masks:
            labels = tuple(seg.get_segment_description(n).segment_label for n, _ in masks)
            out.append((uid, masks, labels))
    return out


def _algorithm(result: Result, objects: Sequence[Dataset]) -> AlgorithmInfo:
    if result.findings is not None:
        return result.findings.algorithm
    for ds in objects:
        if ds.get("Manufacturer") or ds.get("ManufacturerModelName"):
            return AlgorithmInfo(
                vendor=str(ds.get("Manufacturer", "") or result.vendor or ""),
                product=str(ds.get("ManufacturerModelName", "") or result.vendor or "AI"),
                version=str(ds.get("SoftwareVersions", "") or ""),
            )
    return AlgorithmInfo(result.vendor or "", result.vendor or "AI", "")


def read_content(result: Result, source_paths: Sequence[str], tr: Translate) -> Content:
    """The content of ``result``'s renderings, captions translated by ``tr``; ResultError
    when the source study or an object cannot be read."""
    if not source_paths:
        raise ResultError(
            "the study the result was made from is no longer in the spool; nothing to render"
        )
    headers: dict[str, Dataset] = {}
    paths: dict[str, str] = {}
    for path in source_paths:
        ds = _read(path)
        headers[str(ds.SOPInstanceUID)] = ds
        paths[str(ds.SOPInstanceUID)] = path
    objects = [(o, _read(o.path)) for o in result.objects]
    algorithm = _algorithm(result, [ds for _, ds in objects])
    findings = result.findings
    content = Content(
        result=result,
        algorithm=algorithm,
        findings=findings.findings if findings is not None else (),
        summary=findings.summary if findings is not None else None,
        study=next(iter(headers.values())),
        headers=headers,
        paths=paths,
    )
    shown: set[str] = set()
    for obj, _header in objects:
        if obj.sop_class_uid == SEG_CLASS:
            seg = _segmentation(obj.path)
            if seg is None:
                content.problems.append(f"cannot read the segmentation {obj.sop_instance_uid}")
                continue
            content.segmentations.append(seg)
            for n in seg.get_segment_numbers():
                description = seg.get_segment_description(n)
                prop = description.segmented_property_type
                content.segment_rows.append((description.segment_label, prop.meaning))
            for uid, masks, labels in _largest(seg, headers):
                rgb = display_rgb(content.image(uid))
                for number, mask in masks:
                    rgb = draw_mask(rgb, mask, number)
                caption = f"{tr(words.SEGMENT)}: {', '.join(labels)}"
                content.key_images.append(KeyImage(rgb, caption, headers[uid]))
                shown.add(uid)
        elif obj.sop_class_uid in SC_CLASSES:
            full = _read(obj.path, pixels=True)
            source = _source_of(full, headers)
            content.key_images.append(KeyImage(display_rgb(full), tr(words.VENDOR_IMAGE), source))
            if source is not None:
                shown.add(str(source.SOPInstanceUID))
    marks: dict[str, list[Region]] = {}
    for obj, header in objects:
        if obj.sop_class_uid in SR_CLASSES:
            for uid, found in regions(header).items():
                marks.setdefault(uid, []).extend(found)
    captions: dict[str, str] = {}
    for number, finding in enumerate(content.findings, 1):
        for ref in finding.references:
            if ref.sop_instance_uid is not None:
                caption = f"{tr(words.FINDING)} {number}: {finding.code.meaning}"
                captions.setdefault(ref.sop_instance_uid, caption)
    for uid in marks:
        captions.setdefault(uid, tr(words.IMAGE))
    for uid, caption in captions.items():
        if uid not in headers or uid in shown:
            continue
        shown.add(uid)
        rgb = display_rgb(content.image(uid))
        for number, region in enumerate(marks.get(uid, ()), 1):
            rgb = draw_graphic(rgb, region.graphic_type, region.points, number)
        content.key_images.append(KeyImage(rgb, caption, headers[uid]))
    del content.key_images[MAX_KEY_IMAGES:]
    return content


def _segmentation(path: str) -> hd.seg.Segmentation | None:
    """The SEG at ``path`` (highdicom), or None when it cannot be read.

    highdicom insists on Slice Thickness in the Pixel Measures Sequence, which
    PS3.3 requires only of volumetric images: a SEG of a radiograph or a
    mammogram has none. It is added (0, never used: frames are matched to their
    source images by UID) before reading.
    """
    try:
        ds = pydicom.dcmread(path)
        for groups in (ds.get("SharedFunctionalGroupsSequence") or [])[:1]:
            for measures in groups.get("PixelMeasuresSequence") or []:
                if "SliceThickness" not in measures:
                    measures.SliceThickness = 0
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError, TypeError):
        return None


def _largest(seg: hd.seg.Segmentation, headers: dict[str, Dataset]) -> list[Covered]:
    """Per segment, the covered source image where it is largest (each image once)."""
    covered = _segmented(seg, headers)
    chosen: dict[str, Covered] = {}
    for number in seg.get_segment_numbers():
        best = max(
            (c for c in covered if any(n == number for n, _ in c[1])),
            key=lambda c: sum(int(m.sum()) for n, m in c[1] if n == number),
            default=None,
        )
        if best is not None:
            chosen.setdefault(best[0], best)
    return list(chosen.values())


def _source_of(ds: Dataset, headers: dict[str, Dataset]) -> Dataset | None:
    """The image of the original study a vendor's SC was made from, if it names one we hold."""
    for keyword in ("SourceImageSequence", "ReferencedImageSequence"):
        for item in ds.get(keyword, []):
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in headers:
                return headers[uid]
    return None
