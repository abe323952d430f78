"""Burned-in text: images that may carry it are masked in configured regions, or withheld.

An image may carry burned-in text when its Burned In Annotation is ``YES``, or
when it is absent (not ``NO``) on a modality whose images usually do:
ultrasound, secondary capture, endoscopy, photography and other video or
scanned images (the SOP classes of Secondary Capture, or Modality ``US``,
``XC``, ``ES``, ``GM``, ``SM``, ``OP``, ``OT``, ``DOC``, ``IVUS``). Such an
image is never sent as it is: with ``burned_in: mask`` the regions of the first
configured mask that matches its modality, manufacturer, model and size are
set to 0 in every frame (pixel data decoded; the copy is sent uncompressed,
Explicit VR Little Endian) and its Burned In Annotation becomes ``NO``; with
``burned_in: refuse``, or when no mask matches, it is left out of what is sent.
The regions are rectangles in pixels, like the coordinates of CTP's
DicomPixelAnonymizer scripts.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from broker.model.deid import BurnedIn, Deidentify, PixelMask
from broker.model.errors import DeidentificationError

#: Modalities whose images usually carry burned-in text when they do not say otherwise.
PHOTOGRAPHIC = frozenset({"US", "XC", "ES", "GM", "SM", "OP", "OT", "DOC", "IVUS"})
#: Secondary Capture Image Storage and the multi-frame Secondary Capture classes.
SECONDARY_CAPTURE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)


def may_carry_text(ds: Dataset) -> bool:
    """Whether ``ds`` is an image that may carry burned-in text (see the module)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        return False
    said = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if said in ("YES", "NO"):
        return said == "YES"
    modality = str(ds.get("Modality", "") or "").upper()
    return modality in PHOTOGRAPHIC or str(ds.get("SOPClassUID", "")) in SECONDARY_CAPTURE


def mask_for(ds: Dataset, profile: Deidentify) -> PixelMask | str | None:
    """The mask to apply to ``ds``, or why it is withheld, or None: nothing to do."""
    if not may_carry_text(ds):
        return None
    what = (
        f"{ds.get('Modality', '?')} image of {ds.get('Manufacturer', '?')} "
        f"{ds.get('ManufacturerModelName', '')}".rstrip()
    )
    if profile.burned_in is BurnedIn.REFUSE:
        return f"{what} may carry burned-in text and burned_in is refuse"
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    for mask in profile.masks:
        if mask.matches(
            str(ds.get("Modality", "") or ""),
            str(ds.get("Manufacturer", "") or ""),
            str(ds.get("ManufacturerModelName", "") or ""),
            rows,
            columns,
        ):
            return mask
    return f"{what} ({columns}x{rows}) may carry burned-in text and no mask matches it"


def apply_mask(ds: Dataset, mask: PixelMask) -> None:
    """Set ``mask``'s regions to 0 in every frame of ``ds`` (decoded; sent uncompressed)."""
    try:
        pixels = np.array(ds.pixel_array)  # a writable copy
    except (ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise DeidentificationError(f"cannot decode the pixel data to mask it: {exc}") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    for x, y, width, height in mask.regions:
        if samples > 1:
            pixels[..., y : y + height, x : x + width, :] = 0
        else:
            pixels[..., y : y + height, x : x + width] = 0
    photometric = str(ds.PhotometricInterpretation)
    if (
        samples > 1
        and photometric.startswith("YBR")
        and ds.file_meta.TransferSyntaxUID.is_compressed
    ):
        photometric = "RGB"  # pydicom's decoders return colour images as RGB
    frames = ds.get("NumberOfFrames")
    try:
        ds.set_pixel_data(pixels, photometric, int(ds.BitsStored), generate_instance_uid=False)
    except (ValueError, NotImplementedError) as exc:
        raise DeidentificationError(f"cannot write the masked pixel data: {exc}") from exc
    if frames is not None and "NumberOfFrames" not in ds:
        ds.NumberOfFrames = frames
    ds.BurnedInAnnotation = "NO"
