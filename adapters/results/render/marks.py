"""Images for people: stored pixels to 8-bit RGB, and a segmentation's marks drawn on them.

Pure numpy (no I/O). :func:`display_rgb` applies the modality and VOI LUTs of
the image (its window, for a CT) as a viewer would; :func:`draw_mask` fills a
region translucently and draws its outline opaque, so the anatomy under it
stays readable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
    """``rgb`` with ``mask`` filled in segment ``number``'s colour at ``alpha`` and outlined."""
    out = rgb.astype(np.float64)
    tint = np.array(colour(number), dtype=np.float64)
    out[mask] = out[mask] * (1 - alpha) + tint * alpha
    out[outline(mask)] = tint
    drawn: Rgb = out.clip(0, 255).astype(np.uint8)
    return drawn
