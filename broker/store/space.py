"""Disk space: the spool's free space against ``storage.min_free_space``, and the sizes of
the spool and the database for ``/metrics`` and the console.

Every process that needs the free space measures it itself (``statvfs``, a few
microseconds): the DICOM listener processes before each C-STORE, the service for
``/metrics``, ``/readyz`` and the console. A :class:`SpaceWatch` measures at most
every :data:`CHECK_SECONDS` and logs the alarm once when space runs low and once
when it is back, so intake resumes by itself without an operator.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select, text

from broker.model.logging import get_logger
from broker.store.engine import sqlite_file
from broker.store.tables import instances, result_objects, studies

#: The minimum free bytes on a file system of so many bytes (``Storage.min_free_bytes``).
Minimum = Callable[[int], int]

LOG = get_logger("radbridge.space")

#: The free space is measured at most this often by one watch.
CHECK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class FreeSpace:
    """The free space of the spool's file system and the minimum it must keep (bytes)."""

    free: int
    total: int
    minimum: int

    @property
    def low(self) -> bool:
        """Below ``storage.min_free_space``: no new DICOM instances are taken."""
        return self.free < self.minimum

    def describe(self) -> str:
        return (
            f"{_mib(self.free)} free on the spool's file system, below "
            f"storage.min_free_space ({_mib(self.minimum)})"
        )


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def free_space(spool: Path, minimum: Minimum) -> FreeSpace:
    """Measure now (the spool folder, or its nearest existing parent)."""
    folder = Path(spool)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    usage = shutil.disk_usage(folder)
    return FreeSpace(usage.free, usage.total, minimum(usage.total))


class SpaceWatch:
    """The spool's free space, measured at most every ``interval``; logs the alarm when
    it goes low and when it is back."""

    def __init__(self, spool: Path, minimum: Minimum, interval: float = CHECK_SECONDS) -> None:
        self.spool = spool
        self.minimum = minimum
        self.interval = interval
        self._lock = threading.Lock()
        self._at = -interval
        self._last: FreeSpace | None = None

    def current(self) -> FreeSpace:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._at < self.interval:
                return self._last
            measured = free_space(self.spool, self.minimum)
            was_low = self._last is not None and self._last.low
            if measured.low and not was_low:
                LOG.error(
                    "free space low: new DICOM instances are refused (0xA700) until it is back",
                    free_bytes=measured.free,
                    min_free_bytes=measured.minimum,
                )
            elif was_low and not measured.low:
                LOG.warning("free space is back: DICOM intake resumes", free_bytes=measured.free)
            self._last, self._at = measured, now
            return measured


def spool_bytes(engine: Engine) -> int:
    """Bytes the spool holds by the index: instances of studies not purged, and results."""
    with engine.connect() as conn:
        held = conn.execute(
            select(func.coalesce(func.sum(instances.c.size), 0))
            .select_from(instances.join(studies, studies.c.study_uid == instances.c.study_uid))
            .where(studies.c.purged_at.is_(None))
        ).scalar_one()
        results = conn.execute(
            select(func.coalesce(func.sum(result_objects.c.size), 0)).where(
                result_objects.c.purged_at.is_(None)
            )
        ).scalar_one()
    return int(held) + int(results)


def database_bytes(engine: Engine) -> int | None:
    """The database's size on disk (SQLite: the file and its WAL; PostgreSQL: the database)."""
    if engine.dialect.name == "sqlite":
        name = sqlite_file(engine)
        if name is None:
            return None
        return sum(
            Path(name + suffix).stat().st_size
            for suffix in ("", "-wal")
            if Path(name + suffix).exists()
        )
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    return int(size)


__all__ = ["FreeSpace", "SpaceWatch", "database_bytes", "free_space", "spool_bytes"]
