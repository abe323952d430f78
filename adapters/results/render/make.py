"""Make the renderings of one result (see :mod:`adapters.results.render`)."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydicom.dataset import Dataset

from adapters.results.render import sop
from adapters.results.render.content import read_content
from adapters.results.render.page import pdf_pages, summary_pdf
from adapters.results.render.settings import PAGED, Rendering
from adapters.results.render.words import translator
from broker.model.domain import Result
from broker.runtime.results import result_key


@dataclass(slots=True)
class Rendered:
    """What :func:`render` made: DICOM objects, the PDF, and what it could not make."""

    datasets: list[Dataset] = field(default_factory=list)
    pdf: bytes | None = None
    skipped: list[str] = field(default_factory=list)
    """Why a rendering made nothing (``seg_overlay: the result has no segmentation``)."""

    def files(self) -> list[tuple[str, bytes]]:
        """(SOP Instance UID, Part 10 bytes) of each DICOM object."""
        out = []
        for ds in self.datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append((str(ds.SOPInstanceUID), buffer.getvalue()))
        return out


def created_at(result: Result) -> datetime:
    """When the renderings say they were made: when the result completed, in local time."""
    moment = result.completed_at or result.updated_at
    return moment.astimezone().replace(tzinfo=None)


#: Summary PDFs made lately, by (result key, result updated, language): the targets of one
#: result (PACS, RIS, EMR) each ask for the same page within seconds.
_PDFS: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
_PDFS_KEPT = 16
_PDFS_LOCK = threading.Lock()


def _cached_pdf(key: tuple[str, str, str]) -> bytes | None:
    with _PDFS_LOCK:
        pdf = _PDFS.get(key)
        if pdf is not None:
            _PDFS.move_to_end(key)
        return pdf


def _keep_pdf(key: tuple[str, str, str], pdf: bytes) -> None:
    with _PDFS_LOCK:
        _PDFS[key] = pdf
        while len(_PDFS) > _PDFS_KEPT:
            _PDFS.popitem(last=False)


def render(
    result: Result,
    sources: Sequence[str],
    kinds: Sequence[Rendering],
    *,
    language: str | None,
    dicom: bool = True,
) -> Rendered:
    """Make ``kinds`` of ``result`` from the study images at ``sources`` (spool paths).

    ``dicom`` false: only the PDF bytes are made (``pdf`` for HL7 and FHIR); a PDF made
    for another target of the same result a moment ago is used again.
    Raises :class:`broker.model.errors.ResultError` when the sources cannot be read.
    """
    lang = language or "en"
    key = result_key(result)
    cache_key = (key, result.updated_at.isoformat(), lang)
    wanted = set(kinds)
    out = Rendered()
    if not dicom:
        out.pdf = _cached_pdf(cache_key) if wanted & PAGED else None
        if out.pdf is not None or not wanted & PAGED:
            return out
    tr: Callable[[str], str] = translator(lang)
    content = read_content(result, sources, tr)
    out.skipped += content.problems
    created = created_at(result)
    if wanted & PAGED:
        out.pdf = _cached_pdf(cache_key)
        if out.pdf is None:
            footer = f"radbridge · result {result.id}" + (
                f" · job {result.job_id}" if result.job_id is not None else ""
            )
            out.pdf = summary_pdf(content, lang, created=created, footer=footer)
            _keep_pdf(cache_key, out.pdf)
    if not dicom:
        return out
    for kind in kinds:
        if kind is Rendering.SC_SUMMARY and out.pdf is not None:
            pages = pdf_pages(out.pdf)
            out.datasets += sop.summary_sc(content, pages, key=key, language=lang, created=created)
        elif kind is Rendering.KOS:
            kos = sop.key_object_selection(content, key=key, language=lang, created=created)
            if kos is None:
                out.skipped.append("kos: the result names no key image of the study")
            else:
                out.datasets.append(kos)
        elif kind is Rendering.SEG_OVERLAY:
            overlays = sop.seg_overlays(content, key=key, language=lang, created=created)
            if not overlays:
                out.skipped.append("seg_overlay: the result has no segmentation of the study")
            out.datasets += overlays
        elif kind is Rendering.PDF and out.pdf is not None:
            out.datasets.append(
                sop.encapsulated_pdf(content, out.pdf, key=key, language=lang, created=created)
            )
    return out
