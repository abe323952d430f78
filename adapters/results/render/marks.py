"""Images for people: stored pixels to 8-bit RGB, and the result's marks drawn on them.

numpy and Pillow, no I/O. :func:`display_rgb` applies the modality and VOI
LUTs of the image (its window, for a CT) as a viewer would; :func:`draw_mask`
fills a segment translucently and draws its outline opaque, so the anatomy
under it stays readable; :func:`draw_graphic` draws an SR's spatial
coordinates (point, polyline, circle, ellipse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, convert_color_space

Rgb = np.ndarray[Any, np.dtype[np.uint8]]
Mask = np.ndarray[Any, np.dtype[np.bool_]]

#: Colours of segments 1, 2, … (red, yellow, cyan, magenta, green), then again.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 40, 40),
    (255, 220, 0),
    (0, 220, 255),
    (255, 0, 255),
    (40, 230, 40),
)


def colour(number: int) -> tuple[int, int, int]:
    """The colour of segment (or finding) ``number`` (from 1)."""
    return PALETTE[(number - 1) % len(PALETTE)]


def display_rgb(ds: Dataset, frame: int = 0) -> Rgb:
    """Frame ``frame`` of ``ds`` as 8-bit RGB, windowed as a viewer shows it."""
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frame]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or pixels.ndim == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        return _scale(pixels.astype(np.float64)).astype(np.uint8)
    values = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    grey = _scale(np.asarray(values, dtype=np.float64))
    if photometric == "MONOCHROME1":
        grey = 255.0 - grey
    out: Rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    return out


def _scale(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    low, high = float(values.min()), float(values.max())
    return (values - low) * (255.0 / max(high - low, 1e-9))


def outline(mask: Mask) -> Mask:
    """The pixels of ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    edge: Mask = mask & ~inner
    return edge


def draw_mask(rgb: Rgb, mask: Mask, number: int, alpha: float = 0.3) -> Rgb:
    """``rgb`` with ``mask`` filled in segment ``number``'s colour at ``alpha`` and outlined
    (only the masked pixels are computed: a mammogram's overlay stays small in memory)."""
    out: Rgb = rgb.copy()
    tint = np.array(colour(number), dtype=np.float32)
    out[mask] = (out[mask].astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8)
    out[outline(mask)] = colour(number)
    return out


def fit(rgb: Rgb, longest: int) -> Rgb:
    """``rgb`` scaled down (Lanczos) so that its longer side is at most ``longest`` pixels."""
    rows, columns = rgb.shape[:2]
    if max(rows, columns) <= longest:
        return rgb
    scale = longest / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    small: Rgb = np.asarray(Image.fromarray(rgb, "RGB").resize(size, Image.Resampling.LANCZOS))
    return small


def draw_graphic(rgb: Rgb, graphic_type: str, points: Sequence[float], number: int) -> Rgb:
    """``rgb`` with an SR spatial coordinate drawn on it in finding ``number``'s colour.

    ``points`` are DICOM SCOORD Graphic Data (column, row pairs, PS3.3 C.18.6.1.2):
    POINT and MULTIPOINT become crosses, POLYLINE a line (a polygon when closed),
    CIRCLE (centre, a point on it) and ELLIPSE (the ends of both axes) outlines.
    """
    image = Image.fromarray(rgb, "RGB")
    pen = ImageDraw.Draw(image)
    tint = colour(number)
    width = max(1, min(rgb.shape[0], rgb.shape[1]) // 128)
    xy = [(float(points[i]), float(points[i + 1])) for i in range(0, len(points) - 1, 2)]
    if not xy:
        return rgb
    if graphic_type in ("POINT", "MULTIPOINT"):
        arm = max(3, min(rgb.shape[0], rgb.shape[1]) // 32)
        for x, y in xy:
            pen.line([(x - arm, y), (x + arm, y)], fill=tint, width=width)
            pen.line([(x, y - arm), (x, y + arm)], fill=tint, width=width)
    elif graphic_type == "POLYLINE":
        pen.line(xy, fill=tint, width=width)
    elif graphic_type == "CIRCLE" and len(xy) >= 2:
        (cx, cy), (px, py) = xy[0], xy[1]
        r = math.hypot(px - cx, py - cy)
        pen.ellipse([(cx - r, cy - r), (cx + r, cy + r)], outline=tint, width=width)
    elif graphic_type == "ELLIPSE" and len(xy) >= 4:
        (ax, ay), (bx, by), (cx, cy), (dx, dy) = xy[:4]
        centre = ((ax + bx) / 2, (ay + by) / 2)
        major = (bx - centre[0], by - centre[1])
        minor = (dx - (cx + dx) / 2, dy - (cy + dy) / 2)
        outline = [
            (
                centre[0] + major[0] * math.cos(t) + minor[0] * math.sin(t),
                centre[1] + major[1] * math.cos(t) + minor[1] * math.sin(t),
            )
            for t in (2 * math.pi * k / 72 for k in range(73))
        ]
        pen.line(outline, fill=tint, width=width)
    drawn: Rgb = np.asarray(image, dtype=np.uint8).copy()
    return drawn
