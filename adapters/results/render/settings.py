"""``render``, ``language`` and ``originals``: the renderings a write-back target asks for."""

from __future__ import annotations

import enum
from typing import ClassVar, Literal

from pydantic import BaseModel, field_validator, model_validator

from adapters.results.render.fonts import cjk_font


class Rendering(enum.StrEnum):
    """What a target may ask to be made of a result (``render: [...]``)."""

    SC_SUMMARY = "sc_summary"
    KOS = "kos"
    SEG_OVERLAY = "seg_overlay"
    PDF = "pdf"


#: Renderings that lay out the summary page (and so need the font).
PAGED = frozenset({Rendering.SC_SUMMARY, Rendering.PDF})


class RenderSettings(BaseModel):
    """The renderings a target asks for: a mixin of target settings.

    ``render`` lists them (each at most once); ``language`` is the pages'
    language, ``en`` or ``zh_CN`` (left out: the site's ``site.language``).
    ``can_render`` is what the target type can carry.
    """

    render: tuple[Rendering, ...] = ()
    language: Literal["en", "zh_CN"] | None = None
    can_render: ClassVar[frozenset[Rendering]] = frozenset(Rendering)

    @field_validator("render")
    @classmethod
    def _render(cls, value: tuple[Rendering, ...]) -> tuple[Rendering, ...]:
        wrong = [r.value for r in value if r not in cls.can_render]
        if wrong:
            valid = ", ".join(sorted(r.value for r in cls.can_render))
            raise ValueError(f"this target type cannot carry {', '.join(wrong)}; valid: {valid}")
        if len(set(value)) != len(value):
            raise ValueError("a rendering is listed twice")
        if PAGED & set(value):
            cjk_font()  # FontMissingError (a ConfigError) says what to install
        return value


class DicomRenderSettings(RenderSettings):
    """Renderings of a target that stores DICOM objects (``dicom``, ``dicomweb``).

    ``originals`` (default true) says whether the result's own objects (the
    vendor's SR, SEG, SC, or the SR radbridge made of JSON findings) are stored
    too: ``render: [sc_summary, kos]`` with ``originals: false`` gives a PACS
    that cannot show SR or SEG only what it can show.
    """

    originals: bool = True

    @model_validator(mode="after")
    def _something(self) -> DicomRenderSettings:
        if not self.originals and not self.render:
            raise ValueError("originals: false needs at least one rendering in render")
        return self
