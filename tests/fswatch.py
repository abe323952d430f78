"""What happens to the names in one folder, as Linux's inotify(7) reports it: for tests that
must see every way a name appeared (created there, or renamed into it), which polling the
folder can miss."""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Change(enum.IntFlag):
    """The inotify events watched (``<sys/inotify.h>``), and whether the name is a folder."""

    CLOSE_WRITE = 0x00000008
    MOVED_FROM = 0x00000040
    MOVED_TO = 0x00000080
    CREATE = 0x00000100
    DELETE = 0x00000200
    IS_DIR = 0x40000000


WATCHED = Change.CLOSE_WRITE | Change.MOVED_FROM | Change.MOVED_TO | Change.CREATE | Change.DELETE


@dataclass(frozen=True)
class Event:
    name: str
    change: Change


class FolderEvents:
    """The events of the names directly in ``folder`` from the moment this is made (until
    :meth:`close`: use it with :func:`contextlib.closing`)."""

    def __init__(self, folder: Path) -> None:
        self._fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _LIBC.inotify_add_watch(self._fd, os.fsencode(folder), int(WATCHED)) < 0:
            errno = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(errno, f"inotify_add_watch {folder}")

    def read(self) -> list[Event]:
        """The events queued since the last read, in their order."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return events
            at = 0
            while at < len(data):
                _wd, mask, _cookie, length = _HEADER.unpack_from(data, at)
                at += _HEADER.size
                name = data[at : at + length].rstrip(b"\0").decode()
                at += length
                events.append(Event(name, Change(mask & int(WATCHED | Change.IS_DIR))))

    def close(self) -> None:
        os.close(self._fd)
