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
import ctypes
import errno
import os
import tempfile
import threading
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import dimse_messages

from adapters import dicom_scan

#: errno values that mean "no room", as opposed to a broken disk.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: The first bytes of a file kept in memory: its header is read from them, not the file.
HEAD = dicom_scan.FIRST_READ


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
    ``name``, ``close``; a failed write is remembered instead of raised. The file is
    written through its descriptor, unbuffered: a failure belongs to the write that
    caused it."""

    def __init__(self, suffix: str = "", folder: str | None = None) -> None:
        self.failure: OSError | None = None
        self._fd: int | None = None
        self._written = self._flushed = 0
        self._head = bytearray()
        self._header: Dataset | None = None
        self._scanned = False
        self._placed = False
        self.name: str = os.path.join(
            folder or tempfile.gettempdir(), f"{os.urandom(16).hex()}{suffix}"
        )
        refused = _refusal[0]()
        if refused is not None:
            self.failure = LowSpaceError(refused)
            return
        try:
            self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            self.failure = exc

    @property
    def file(self) -> ReceivingFile:
        """pynetdicom flushes ``file``; unbuffered writes leave nothing to flush."""
        return self

    @property
    def no_space(self) -> bool:
        return self.failure is not None and self.failure.errno in NO_SPACE

    def header(self) -> Dataset | None:
        """The header scanned from the file's first :data:`HEAD` bytes, kept as written
        (:func:`adapters.dicom_scan.scan`): scanned once they are all in, or now for a
        shorter file; None when the file must be read (a longer header, or one pydicom
        must judge)."""
        if not self._scanned and self.failure is None:
            self._scanned = True
            self._header = dicom_scan.scan_head(bytes(self._head))
        return self._header

    @property
    def size(self) -> int:
        """Bytes written."""
        return self._written

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.failure is None and self._fd is not None:
            view = memoryview(data)
            if len(self._head) < HEAD:
                self._head += view[: HEAD - len(self._head)]
                if len(self._head) == HEAD:
                    self.header()  # now, while the rest of the data set arrives
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._fail(exc)
                return len(data)
            self._written += len(data)
            if self._written - self._flushed >= WRITE_BACK_EVERY:
                start_write_back(self._fd, self._flushed, self._written - self._flushed)
                self._flushed = self._written
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""

    def _fail(self, exc: OSError) -> None:
        self.failure = exc
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # give the space back now, not at unlink
        self._close()

    def finish(self) -> None:
        """All is written: start the write-back of what was not started yet (the file stays
        open: it is synced through its descriptor)."""
        if self._fd is not None and self.failure is None and self._written > self._flushed:
            start_write_back(self._fd, self._flushed, self._written - self._flushed)
            self._flushed = self._written

    def fileno(self) -> int | None:
        """The open file's descriptor (None once closed, or if it never opened)."""
        return self._fd

    def close(self) -> None:
        """Close the file, starting the write-back of what was not started yet."""
        self.finish()
        self._close()

    def placed(self) -> None:
        """The file was renamed into the spool: :meth:`discard` only closes it."""
        self._placed = True

    def discard(self) -> None:
        """Close, and remove the file unless it was :meth:`placed` (unfinished or refused)."""
        self._close()
        if not self._placed:
            with contextlib.suppress(OSError):
                os.unlink(self.name)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class Folders:
    """Folders under the spool's ``tmp`` for the files of one association at a time.

    Making a file in a folder and renaming it away both lock the folder: associations
    receiving in parallel into one folder wait for each other (and spin, on Linux,
    while a slow inode allocation holds it). Each association takes a folder when its
    first data set arrives and gives it back when it ends; folders are made as needed
    and kept for the next association (the spool's ``tmp`` is emptied at start).
    """

    def __init__(self) -> None:
        self._free: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def take(self) -> str:
        """A folder no other association uses (in the current ``tempfile.gettempdir()``)."""
        root = os.path.abspath(tempfile.gettempdir())  # what give_back finds it by
        with self._lock:
            free = self._free.get(root)
            if free:
                return free.pop()
        return tempfile.mkdtemp(dir=root)

    def give_back(self, folder: str) -> None:
        with self._lock:
            self._free.setdefault(os.path.dirname(folder), []).append(folder)


#: The listener process's folders (:class:`Folders`).
FOLDERS = Folders()

#: Bytes written after which their write-back to the disk is started (the sync that
#: makes the object durable then waits for less).
WRITE_BACK_EVERY = 256 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range``, or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_START_WRITE_BACK = _sync_file_range()


def start_write_back(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file to the disk, without waiting (nothing is durable
    until the file is synced; this only gets the disk going while the rest arrives)."""
    if _START_WRITE_BACK is not None:
        _START_WRITE_BACK(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def receiving_file(*, delete: bool = False, mode: str = "wb", suffix: str = "") -> ReceivingFile:
    """Stands in for ``NamedTemporaryFile(delete=False, mode="wb", suffix=...)``."""
    assert not delete and mode == "wb", "pynetdicom's chunked C-STORE file only"
    return ReceivingFile(suffix)


def install(refusal: Callable[[], str | None] = _no_refusal) -> None:
    """Make pynetdicom write arriving C-STORE data sets through :class:`ReceivingFile`;
    ``refusal`` says why a data set may not be written now (None: it may)."""
    _refusal[0] = refusal
    setattr(dimse_messages, "NamedTemporaryFile", receiving_file)  # noqa: B010


def file_of(request: Any) -> ReceivingFile | None:
    """The file a C-STORE request's data set was written to by pynetdicom, if it was one."""
    spooled = getattr(request, "_dataset_file", None)
    return spooled if isinstance(spooled, ReceivingFile) else None


__all__ = ["NO_SPACE", "LowSpaceError", "ReceivingFile", "file_of", "install", "receiving_file"]
