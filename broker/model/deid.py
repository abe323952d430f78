"""De-identification of what leaves the hospital: the profile, the keyed pseudonyms.

A vendor or a route with ``deidentify:`` gets only de-identified copies of the
study (DICOM PS3.15 Annex E, the Basic Application Level Confidentiality
Profile and the options of :class:`DeidOption`); the spool keeps the original.
This module is pure: the settings (:class:`Deidentify`), the keyed pseudonyms
(:class:`Pseudonyms`) and what one de-identified send was (:class:`Outbound`).
The tag actions themselves work on DICOM data sets, so they live in
``adapters/deid``, found through the ``deidentify_study`` and
``reidentify_file`` entry points of ``radbridge.registries``.

Pseudonyms are an HMAC-SHA256 of the original value under the installation's
secret (``RADBRIDGE_PRIVACY__PSEUDONYM_SECRET``): the same patient, study,
series or instance always gets the same pseudonym, so a vendor can compare a
patient's studies, and nobody can go back without radbridge's table of the
pseudonyms it issued (``broker.store.pseudonyms``).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The environment variable that holds the pseudonym secret.
SECRET_VARIABLE = "RADBRIDGE_PRIVACY__PSEUDONYM_SECRET"  # noqa: S105 (its name, not a secret)
#: The shortest secret accepted (characters).
MIN_SECRET = 16


class DeidOption(enum.StrEnum):
    """The options of PS3.15 Annex E a hospital may add to the Basic profile."""

    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    """Dates kept, shifted by a per-patient number of days; times kept."""
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    """Sex, age, size, weight, smoking and pregnancy status… kept."""
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    """Station name, device serial number, detector ID… kept."""
    CLEAN_DESCRIPTORS = "clean_descriptors"
    """Study, series and protocol descriptions kept, identifying words removed."""
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    """An SR's content tree kept, de-identified item by item."""
    CLEAN_GRAPHICS = "clean_graphics"
    """Graphic annotations kept without their text objects."""


class BurnedIn(enum.StrEnum):
    """What happens to an image that may carry burned-in text (see :class:`Deidentify`)."""

    REFUSE = "refuse"
    MASK = "mask"


class PixelMask(BaseModel):
    """Regions blacked out of images of one kind: rectangles ``[x, y, width, height]``.

    An image matches when each of ``modality``, ``manufacturer`` (a prefix, any
    case), ``model`` (a prefix, any case), ``rows`` and ``columns`` that is given
    equals the image's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    rows: Annotated[int, Field(ge=1)] | None = None
    columns: Annotated[int, Field(ge=1)] | None = None
    regions: Annotated[list[tuple[Annotated[int, Field(ge=0)], ...]], Field(min_length=1)]

    @field_validator("regions")
    @classmethod
    def _rectangles(cls, value: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        for i, region in enumerate(value):
            if len(region) != 4 or region[2] < 1 or region[3] < 1:
                raise ValueError(
                    f"regions[{i}] is {list(region)}; valid: [x, y, width, height] in pixels, "
                    "width and height at least 1"
                )
        return value

    def matches(
        self, modality: str, manufacturer: str, model: str, rows: int, columns: int
    ) -> bool:
        """Whether an image with these attributes is one this mask is for."""

        def prefix(wanted: str | None, value: str) -> bool:
            return wanted is None or value.lower().startswith(wanted.lower())

        return (
            (self.modality is None or self.modality.upper() == modality.upper())
            and prefix(self.manufacturer, manufacturer)
            and prefix(self.model, model)
            and (self.rows is None or self.rows == rows)
            and (self.columns is None or self.columns == columns)
        )


_PRIVATE = re.compile(
    r"^(?P<creator>[^()]*[^ ()])\s*"
    r"\((?P<group>[0-9A-Fa-f]{4}),\s*[xX]{2}(?P<element>[0-9A-Fa-f]{2})\)$"
)


@dataclass(frozen=True, slots=True)
class PrivateTag:
    """A private attribute by its creator: ``GEMS_PARM_01 (0043,xx39)``."""

    creator: str
    group: int
    element: int
    """The low byte of the element number (the block's offset)."""


def parse_private(text: str) -> PrivateTag:
    """``CREATOR (gggg,xxee)`` as a :class:`PrivateTag`; ValueError says what is valid."""
    found = _PRIVATE.match(text.strip())
    if not found or int(found["group"], 16) % 2 == 0:
        raise ValueError(
            f"not a private tag: {text!r}; valid: the private creator and the tag with xx "
            "for the block, e.g. 'GEMS_PARM_01 (0043,xx39)' (an odd group)"
        )
    return PrivateTag(found["creator"], int(found["group"], 16), int(found["element"], 16))


class Deidentify(BaseModel):
    """A vendor's or a route's ``deidentify:`` block.

    ``profile``: ``basic`` (PS3.15 Annex E, Basic Application Level
    Confidentiality Profile); ``options``: see :class:`DeidOption`;
    ``keep_private``: private attributes kept (``CREATOR (gggg,xxee)``), every
    other private attribute is removed; ``burned_in``: what happens to an image
    that may carry burned-in text (BurnedInAnnotation ``YES``, or not ``NO`` on
    ultrasound, secondary capture and other photographic modalities): ``refuse``
    (it is not sent) or ``mask`` (the regions of the first of ``masks`` that
    matches are blacked out; an image no mask matches is not sent).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Literal["basic"] = "basic"
    options: list[DeidOption] = Field(default_factory=list)
    keep_private: list[str] = Field(default_factory=list)
    burned_in: BurnedIn = BurnedIn.REFUSE
    masks: list[PixelMask] = Field(default_factory=list)

    @field_validator("keep_private")
    @classmethod
    def _private_tags(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_private(text)
        return value

    @property
    def kept_private(self) -> tuple[PrivateTag, ...]:
        return tuple(parse_private(t) for t in self.keep_private)

    def has(self, option: DeidOption) -> bool:
        return option in self.options

    def describe(self) -> str:
        """``basic`` followed by its options: ``basic+retain_patient_characteristics``."""
        return "+".join([self.profile, *sorted(o.value for o in self.options)])


class PseudonymKind(enum.StrEnum):
    """What a pseudonym stands for."""

    PATIENT = "patient"
    ACCESSION = "accession"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"
    UID = "uid"
    """Any other UID (frame of reference, UIDs inside sequences…)."""


@dataclass(frozen=True, slots=True)
class Pseudonym:
    """One value radbridge replaced: what it was, what the vendor saw instead."""

    kind: PseudonymKind
    pseudonym: str
    original: str
    study_uid: str
    """The original Study Instance UID it was issued for."""
    sent_with: str | None = None
    """The study whose job last sent it (for a prior's pseudonyms, the current study: the
    prior itself may not be in radbridge's index); retention purges it with that study.
    None: recorded before radbridge kept this."""


class Pseudonyms:
    """Keyed, stable, one-way replacements (HMAC-SHA256 under the installation's secret)."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET:
            raise ValueError(
                f"the pseudonym secret has {len(secret)} characters; valid: at least "
                f"{MIN_SECRET} (set {SECRET_VARIABLE})"
            )
        self._key = secret.encode("utf-8")

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A UID under the 2.25 root (PS3.5 B.2) that stands for ``original``."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """``RB`` and 14 letters and digits for the patient (ID and issuer)."""
        code = base64.b32encode(self._digest("patient", f"{issuer}\x00{patient_id}")).decode()
        return "RB" + code[:14]

    def accession(self, accession: str) -> str:
        """``RBA`` and 13 letters and digits (fits Accession Number, SH)."""
        return "RBA" + base64.b32encode(self._digest("accession", accession)).decode()[:13]

    def day_shift(self, patient_id: str, issuer: str = "") -> int:
        """Days a patient's dates move back (between 1 and 10 years), the same every time."""
        digest = self._digest("days", f"{issuer}\x00{patient_id}")
        return 365 + int.from_bytes(digest[:4], "big") % (3650 - 365)


@dataclass(frozen=True, slots=True)
class Outbound:
    """What de-identifying one job's study made: the files to send, the pseudonyms issued."""

    files: tuple[Path, ...]
    pseudonyms: tuple[Pseudonym, ...]
    profile: str
    """:meth:`Deidentify.describe` of the profile applied."""
    study_pseudonym: str
    withheld: tuple[str, ...] = ()
    """Why each image that was not sent was left out (burned-in text, no mask)."""
    masked: int = 0
    """Images sent with regions blacked out."""
    folder: Path | None = None
    """The temporary folder of ``files`` (removed after the send)."""

    def summary(self) -> dict[str, object]:
        """What the audit trail and the job's history say about it."""
        return {
            "profile": self.profile,
            "study_pseudonym": self.study_pseudonym,
            "instances": len(self.files),
            "masked": self.masked,
            "withheld": len(self.withheld),
        }
