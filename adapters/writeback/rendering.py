"""The renderings a target carries: what a DICOM target stores, the PDF for documents.

:func:`objects_to_store` gives the files of one delivery: the result's own
objects unless ``originals: false``, and the renderings of ``render``
(:mod:`adapters.results.render`), written for the attempt into a private
temporary folder (mode 0700) that is removed after it. The renderings are
made again on each attempt from the stored result and the spooled study; their
UIDs are fixed by the result, so a retry stores the same instances.

:func:`summary_pdf_for` makes the summary PDF for targets that take documents
(``hl7``: an ED OBX in the ORU; ``fhir``: a DocumentReference).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from adapters.results.render.settings import DicomRenderSettings, Rendering, RenderSettings
from adapters.writeback.base import TargetRejectedError
from broker.model.errors import ResultError
from broker.model.writeback import WritebackItem


@dataclass(frozen=True, slots=True)
class ToStore:
    """The files of one delivery and what to say about them."""

    paths: list[Path]
    originals: int
    rendered: int
    notes: tuple[str, ...]

    def detail(self) -> str:
        """``2 original and 4 rendered object(s)`` and why a rendering made nothing."""
        said = f"{self.originals} original and {self.rendered} rendered object(s)"
        return "; ".join((said, *self.notes))


def object_paths(item: WritebackItem) -> list[Path]:
    """The spool files of the result's objects, or TargetRejectedError when there are none."""
    result = item.result
    if result is None or not result.objects:
        raise TargetRejectedError(
            f"result {item.delivery.result_id} has no DICOM objects to store "
            "(findings only: write them back with an hl7 or fhir target, or render them)"
        )
    return [Path(o.path) for o in result.objects]


@contextmanager
def objects_to_store(item: WritebackItem, settings: DicomRenderSettings) -> Iterator[ToStore]:
    """The files to store for ``item`` (see the module docstring), valid inside the block.

    Raises TargetRejectedError when there is nothing to store or the renderings
    cannot be made from what radbridge holds (the study left the spool).
    """
    result = item.result
    if not settings.render:
        paths = object_paths(item)
        yield ToStore(paths, len(paths), 0, ())
        return
    if result is None:
        raise TargetRejectedError(f"delivery {item.delivery.id} has no result to render")
    originals = [Path(o.path) for o in result.objects] if settings.originals else []
    from adapters.results.render.make import render  # noqa: PLC0415 (heavy; only when used)

    try:
        made = render(result, item.sources(), settings.render, language=settings.language)
    except ResultError as exc:
        raise TargetRejectedError(f"cannot render result {result.id}: {exc}") from exc
    if not originals and not made.datasets:
        raise TargetRejectedError(
            f"nothing to store for result {result.id}: {'; '.join(made.skipped)}"
        )
    with TemporaryDirectory(prefix="radbridge-render-") as folder:
        rendered = []
        for uid, data in made.files():
            path = Path(folder) / f"{uid}.dcm"
            path.write_bytes(data)
            rendered.append(path)
        yield ToStore(originals + rendered, len(originals), len(rendered), tuple(made.skipped))


def summary_pdf_for(item: WritebackItem, settings: RenderSettings) -> bytes | None:
    """The summary PDF of ``item``'s result for a target that takes documents (``hl7``,
    ``fhir`` with ``render: [pdf]``); None when the target does not ask for it.

    Raises TargetRejectedError when it cannot be made from what radbridge holds.
    """
    result = item.result
    if Rendering.PDF not in settings.render or result is None:
        return None
    from adapters.results.render.make import render  # noqa: PLC0415 (heavy; only when used)

    try:
        made = render(
            result, item.sources(), (Rendering.PDF,), language=settings.language, dicom=False
        )
    except ResultError as exc:
        raise TargetRejectedError(f"cannot render result {result.id}: {exc}") from exc
    return made.pdf
