"""The simulated modality: C-STORE a generated study, or a folder of files, to any AE.

:func:`send_files` splits the files over ``associations`` concurrent
associations (contiguous slices, so each series mostly travels on one
association) and sends each file as it is on disk: pynetdicom's chunked
send reads the dataset bytes after the file meta and puts them on the wire
unchanged, in the file's own transfer syntax (one presentation context per
SOP class and transfer syntax found; no transcoding). Every C-STORE status is
kept; :class:`SendReport` says how many instances and bytes went, in how
long, and which failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import _config, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import Status

from adapters.dicom.client import RequestorAE
from adapters.harness.errors import HarnessError

_config.STORE_SEND_CHUNKED_DATASET = True

#: Presentation contexts one association may propose (PS3.8: 128 odd IDs).
MAX_CONTEXTS = 128
#: Warning statuses of C-STORE: stored, with a remark (coercion, elements discarded).
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class Failure:
    """One file that was not stored: its path and why (status or error)."""

    path: Path
    status: int | None
    reason: str


@dataclass
class SendReport:
    """What a send did: instances stored, bytes, seconds, failures."""

    instances: int = 0
    bytes: int = 0
    seconds: float = 0.0
    associations: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"{self.instances} instances, {self.megabytes:.1f} MB in {self.seconds:.2f} s "
            f"({self.mb_per_second:.1f} MB/s) over {self.associations} association(s)"
        )
        if self.failures:
            text += f"; {len(self.failures)} failed"
        return text


def dicom_files(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """The files named, and every file under the folders named, sorted (hidden files skipped)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
        else:
            files.append(item)
    return files


def _contexts(files: Sequence[Path]) -> tuple[list[PresentationContext], dict[Path, str]]:
    pairs: dict[tuple[str, str], None] = {}
    syntax: dict[Path, str] = {}
    for path in files:
        try:
            meta = read_file_meta_info(path)
        except (InvalidDicomError, OSError) as exc:
            raise HarnessError(f"{path}: not a DICOM Part 10 file ({exc})") from exc
        sop, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        pairs[(sop, ts)] = None
        syntax[path] = ts
    if len(pairs) > MAX_CONTEXTS:
        raise HarnessError(
            f"{len(pairs)} (SOP class, transfer syntax) pairs; one association carries at most "
            f"{MAX_CONTEXTS}: send the files in several runs"
        )
    return [build_context(sop, [ts]) for sop, ts in pairs], syntax


def _split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    size, extra = divmod(len(files), parts)
    chunks, start = [], 0
    for n in range(parts):
        end = start + size + (1 if n < extra else 0)
        chunks.append(list(files[start:end]))
        start = end
    return [c for c in chunks if c]


def send_files(
    files: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "MODALITY",
    associations: int = 1,
    timeout: float = 30.0,
    on_sent: Callable[[Path, int], None] | None = None,
) -> SendReport:
    """C-STORE ``files`` over ``associations`` concurrent associations; the report.

    ``on_sent(path, size)`` is called after each successful C-STORE (from the
    sending threads), e.g. to advance a progress bar. A refused association
    fails every file it was to carry; an association that breaks fails the
    files not yet acknowledged.
    """
    if associations < 1:
        raise HarnessError(f"associations must be at least 1, got {associations}")
    files = list(files)
    report = SendReport()
    if not files:
        return report
    contexts, _syntax = _contexts(files)
    chunks = _split(files, min(associations, len(files)))
    lock = threading.Lock()

    def run(chunk: list[Path]) -> None:
        ae = RequestorAE(ae_title=calling_ae)  # keeps the responses pynetdicom drops
        ae.requested_contexts = contexts
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        assoc = ae.associate(host, port, ae_title=called_ae)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "association failed"
            if assoc.is_aborted:
                why = "association aborted"
            with lock:
                report.failures += [Failure(p, None, why) for p in chunk]
            return
        with lock:
            report.associations += 1
        try:
            for index, path in enumerate(chunk):
                try:
                    status = assoc.send_c_store(path)
                except (ValueError, AttributeError, RuntimeError) as exc:
                    with lock:
                        report.failures.append(Failure(path, None, str(exc)))
                    if assoc.is_established:
                        continue
                    status = Dataset()
                    index += 1  # noqa: PLW2901 - the rest after this one
                code = int(status.Status) if "Status" in status else None
                if code is None:
                    rest = chunk[index:]
                    with lock:
                        report.failures += [
                            Failure(p, None, "no answer: the association broke") for p in rest
                        ]
                    return
                if code == Status.SUCCESS or code in WARNING_STATUSES:
                    size = path.stat().st_size
                    with lock:
                        report.instances += 1
                        report.bytes += size
                    if on_sent is not None:
                        on_sent(path, size)
                else:
                    comment = str(status.get("ErrorComment", "")) or "failed"
                    with lock:
                        report.failures.append(Failure(path, code, f"0x{code:04X} {comment}"))
        finally:
            if assoc.is_established:
                assoc.release()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(chunks), thread_name_prefix="modality") as pool:
        for future in [pool.submit(run, chunk) for chunk in chunks]:
            future.result()
    report.seconds = time.monotonic() - started
    return report
