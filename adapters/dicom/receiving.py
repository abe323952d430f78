"""Where an arriving C-STORE data set is written: a temporary file that survives a full disk.

pynetdicom streams each C-STORE's data set into a ``NamedTemporaryFile`` in the
spool's ``tmp`` folder, from its DUL thread. A write that fails there (no space,
quota, I/O error) raises inside pynetdicom, which drops the association: the
sender gets no status and the partial file stays behind.

:class:`ReceivingFile` takes that file's place (:func:`install`). The first
failed write is kept as :attr:`ReceivingFile.failure`, the file is cut to
nothing at once (its space goes back to the disk) and the rest of the data set
is read and dropped, so the association goes on and the C-STORE handler answers
0xA700 (out of resources). Writes are unbuffered, so a failure belongs to the
write that caused it and no buffered bytes are written later.

Below ``storage.min_free_space`` (:func:`install`'s ``refusal``) no file is
made at all: the data set is read and dropped, its failure is
:class:`LowSpaceError` and the handler answers 0xA700 the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from pynetdicom import dimse_messages

#: errno values that mean "no room", as opposed to a broken disk.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class LowSpaceError(OSError):
    """The spool's free space is below ``storage.min_free_space``: nothing was written."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ENOSPC, reason)


def _no_refusal() -> str | None:
    return None


#: Why no new data set may be written now (None: it may); set by :func:`install`.
_refusal: list[Callable[[], str | None]] = [_no_refusal]


class ReceivingFile:
    """The parts of ``NamedTemporaryFile`` pynetdicom uses: ``write``, ``file.flush``,
    ``name``, ``close``; a failed write is remembered instead of raised."""

    def __init__(self, suffix: str = "") -> None:
        self.failure: OSError | None = None
        self._file: Any = None
        self.name: str = os.path.join(
            tempfile.gettempdir(), f"unwritten-{uuid.uuid4().hex}{suffix}"
        )
        refused = _refusal[0]()
        if refused is not None:
            self.failure = LowSpaceError(refused)
            return
        try:
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - pynetdicom closes it
                delete=False, mode="wb", suffix=suffix, buffering=0
            )
            self.name = str(self._file.name)
        except OSError as exc:
            self.failure = exc

    @property
    def file(self) -> ReceivingFile:
        """pynetdicom flushes ``file``; unbuffered writes leave nothing to flush."""
        return self

    @property
    def no_space(self) -> bool:
        return self.failure is not None and self.failure.errno in NO_SPACE

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if self.failure is None:
            try:
                while view:
                    view = view[self._file.write(view) :]
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""

    def _fail(self, exc: OSError) -> None:
        self.failure = exc
        with contextlib.suppress(OSError):
            os.ftruncate(self._file.fileno(), 0)  # give the space back now, not at unlink
        self.close()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()


def receiving_file(*, delete: bool = False, mode: str = "wb", suffix: str = "") -> ReceivingFile:
    """Stands in for ``NamedTemporaryFile(delete=False, mode="wb", suffix=...)``."""
    assert not delete and mode == "wb", "pynetdicom's chunked C-STORE file only"
    return ReceivingFile(suffix)


def install(refusal: Callable[[], str | None] = _no_refusal) -> None:
    """Make pynetdicom write arriving C-STORE data sets through :class:`ReceivingFile`;
    ``refusal`` says why a data set may not be written now (None: it may)."""
    _refusal[0] = refusal
    setattr(dimse_messages, "NamedTemporaryFile", receiving_file)  # noqa: B010


def failure_of(request: Any) -> OSError | None:
    """The write failure of a C-STORE request's data set file, if it had one."""
    spooled = getattr(request, "_dataset_file", None)
    return spooled.failure if isinstance(spooled, ReceivingFile) else None


__all__ = ["NO_SPACE", "LowSpaceError", "ReceivingFile", "failure_of", "install", "receiving_file"]
