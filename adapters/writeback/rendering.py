"""The renderings a target carries: what a DICOM target stores, the PDF for documents.

:func:`objects_to_store` gives the files of one delivery: the result's own
objects unless ``originals: false``, and the renderings of ``render``
(:mod:`adapters.results.render`). Those are made once per result, target,
language and rendering list, in the result's spool folder of renderings
(``item.renderings``: a private folder, mode 0700, placed whole by one rename)
and every retry sends those same files: the same instances, byte for byte, even
after the study's images left the spool. Retention removes them with the
result's objects. Without that folder (a combined answer, made per attempt)
they are made for the attempt in a private temporary folder removed after it.
Their UIDs are fixed by the result either way.

:func:`summary_pdf_for` makes the summary PDF for targets that take documents
(``hl7``: an ED OBX in the ORU; ``fhir``: a DocumentReference).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from adapters.results.render.settings import DicomRenderSettings, Rendering, RenderSettings
from adapters.writeback.base import TargetRejectedError
from broker.model.domain import Result
from broker.model.errors import ResultError
from broker.model.writeback import WritebackItem
from broker.store.spool import fsync_dir, sync_tree


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
    if item.renderings is None:
        with TemporaryDirectory(prefix="radbridge-render-") as scratch:
            rendered, notes = _render_into(Path(scratch), item, result, settings)
            yield _to_store(result.id, originals, rendered, notes)
        return
    folder = item.renderings / _kept_name(item.delivery.target, result, settings)
    if not (folder / MADE).exists():
        _make_kept(folder, item, result, settings)
    notes = tuple(json.loads((folder / MADE).read_text(encoding="utf-8"))["notes"])
    rendered = sorted(folder.glob("*.dcm"))
    yield _to_store(result.id, originals, rendered, notes)


#: The record of a kept folder of renderings: written last, so the folder is whole.
MADE = "made.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _kept_name(target: str, result: Result, settings: DicomRenderSettings) -> str:
    """``TARGET.LANGUAGE.HASH``: one folder per target, language, and rendering list and
    result version (a result updated, or a target asking for other renderings, gets new)."""
    what = [result.updated_at.isoformat(), *sorted(r.value for r in settings.render)]
    digest = hashlib.sha256("|".join(what).encode()).hexdigest()[:16]
    language = settings.language or "site"
    return f"{_UNSAFE.sub('_', target)}.{_UNSAFE.sub('_', language)}.{digest}"


def _make_kept(
    folder: Path, item: WritebackItem, result: Result, settings: DicomRenderSettings
) -> None:
    """Render into a private folder beside ``folder``, fsync'd, then rename it into place;
    a folder another attempt placed first wins (the same renderings)."""
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _, notes = _render_into(scratch, item, result, settings)
        (scratch / MADE).write_text(json.dumps({"notes": list(notes)}), encoding="utf-8")
        sync_tree(scratch)
        try:
            scratch.rename(folder)
        except OSError:
            if not (folder / MADE).exists():
                raise
        fsync_dir(folder.parent)
    except OSError as exc:
        raise TargetRejectedError(f"cannot keep the renderings in {folder.parent}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _render_into(
    folder: Path, item: WritebackItem, result: Result, settings: DicomRenderSettings
) -> tuple[list[Path], tuple[str, ...]]:
    """The renderings of ``result`` (``item``'s) written into ``folder``, and why some made
    nothing; TargetRejectedError when they cannot be made from what radbridge holds."""
    from adapters.results.render.make import render  # noqa: PLC0415 (heavy; only when used)

    try:
        made = render(result, item.sources(), settings.render, language=settings.language)
    except ResultError as exc:
        raise TargetRejectedError(f"cannot render result {result.id}: {exc}") from exc
    if not settings.originals and not made.datasets:
        raise TargetRejectedError(
            f"nothing to store for result {result.id}: {'; '.join(made.skipped)}"
        )
    rendered = []
    for uid, data in made.files():
        path = folder / f"{uid}.dcm"
        path.write_bytes(data)
        rendered.append(path)
    return rendered, tuple(made.skipped)


def _to_store(
    result_id: int, originals: list[Path], rendered: list[Path], notes: tuple[str, ...]
) -> ToStore:
    if not originals and not rendered:
        raise TargetRejectedError(f"nothing to store for result {result_id}: {'; '.join(notes)}")
    return ToStore(originals + rendered, len(originals), len(rendered), notes)


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
