"""Reloading the configuration file: build a whole new snapshot, then swap it in one step.

A reload (SIGHUP, the file changing, ``POST /api/v1/config/reload``) loads and
validates the file and builds a complete :class:`~broker.runtime.snapshot.Snapshot`
from it; only when that succeeded does the holder swap it in. Anything that fails
leaves the snapshot in force untouched, and says why.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from broker.model.errors import ConfigError
from broker.model.logging import get_logger
from broker.runtime.snapshot import SnapshotHolder, build_snapshot
from config.loader import load_settings

LOG = get_logger("radbridge.reload")
RELOAD_POLL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: the snapshot in force after it, and the problems if it was refused."""

    reloaded: bool
    snapshot: str
    """The id of the snapshot in force after the reload (the old one when refused)."""
    previous: str
    problems: tuple[str, ...] = field(default_factory=tuple)


class Reloader:
    """Reloads one configuration file into a :class:`SnapshotHolder`."""

    def __init__(self, holder: SnapshotHolder, path: Path | None) -> None:
        self.holder = holder
        self.path = path
        self._mtime = path.stat().st_mtime if path is not None and path.exists() else None
        self._lock = threading.Lock()

    def reload(self) -> ReloadOutcome:
        """Load the file again; on any problem keep the snapshot in force and say why."""
        with self._lock:
            old = self.holder.current
            if self.path is None:
                problem = "this radbridge was not started from a configuration file"
                return ReloadOutcome(False, old.id, old.id, (problem,))
            try:
                new = build_snapshot(load_settings(self.path), self.path)
            except ConfigError as exc:
                LOG.error(
                    "configuration not reloaded; the running configuration stays in force",
                    snapshot=old.id,
                    problems=exc.problems,
                )
                return ReloadOutcome(False, old.id, old.id, tuple(exc.problems))
            self.holder.swap(new)
            LOG.info(
                "configuration reloaded",
                snapshot=new.id,
                previous=old.id,
                routes=len(new.settings.routes),
                vendors=len(new.settings.vendors),
            )
            return ReloadOutcome(True, new.id, old.id)

    def watch(self, stop: threading.Event, hup: threading.Event) -> None:
        """Reload on SIGHUP (``hup`` set) or when the file's modification time changes."""
        while not stop.is_set():
            if hup.wait(RELOAD_POLL_SECONDS):
                hup.clear()
                self.reload()
                continue
            if self.path is None or not self.path.exists():
                continue
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._mtime = mtime
                self.reload()
