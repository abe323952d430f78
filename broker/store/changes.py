"""Whether the store changed: what lets the idle service's timers sleep.

SQLite counts the commits of other connections, in any process, in
``PRAGMA data_version``: read on a connection of its own, the count moves
when a listener process indexed an instance or recorded a result, a CLI
command released a job, an order arrived, a worker failed a send, and stays
put while nothing happens. PostgreSQL has no such count; there the timers
look at the store on their own, as often as their promises need.
"""

from __future__ import annotations

import sqlite3
import threading

from sqlalchemy import Engine

from broker.store.engine import sqlite_file


class StoreChanges:
    """A look at SQLite's ``data_version``: :meth:`changed` since the last look."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    @classmethod
    def of(cls, engine: Engine) -> StoreChanges | None:
        """The changes of ``engine``'s store; None when it cannot tell them (not a SQLite file)."""
        database = sqlite_file(engine)
        return None if database is None else cls(database)

    def changed(self) -> bool:
        """Whether a connection other than this one committed since the last look (the
        first look: True). A store that cannot be read counts as changed."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(
                        self.database, check_same_thread=False, isolation_level=None
                    )
                row = self._conn.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error:
                self._close()
                return True
            version = int(row[0])
            changed, self._version = version != self._version, version
            return changed

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._version = None
