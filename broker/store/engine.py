"""Engine creation, write transactions and schema migration (SQLite default, PostgreSQL)."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from broker.model.errors import StoreError

_WRITE_FLAG = "radbridge_write"


class _WriterLock:
    """One SQLite writer at a time across threads and processes, woken at once when free.

    SQLite's own busy handler sleeps in growing steps (1, 2, 5, … 100 ms) while
    another process writes; with several listener processes that adds
    milliseconds to C-STOREs. An ``flock`` beside the database queues writers
    in the kernel instead, and each gets the lock the moment it is released.
    The thread holding it may take it again (a group commit holds it while it
    gathers its group, then writes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return
        self._thread_lock.acquire()
        try:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._thread_lock.release()
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from exc
        self._owner, self._depth = me, 1

    def __exit__(self, *_exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        self._owner = None
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_LOCKS: weakref.WeakKeyDictionary[Engine, _WriterLock] = weakref.WeakKeyDictionary()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for the store: WAL, and queued immediate writers, on SQLite.

    A statement's parameters (patients' names and IDs among them) are left out of the
    text of its errors, which reach logs and answers.
    """
    kwargs.setdefault("hide_parameters", True)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    database = parsed.database
    engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        _LOCKS[engine] = _WriterLock(Path(database).with_name(Path(database).name + ".lock"))
    _tune_sqlite(engine)
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let the "begin" event below choose the kind of transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL with synchronous=FULL: every commit fsyncs the WAL before it returns, so
        # whatever was acknowledged (an HL7 ACK, a FHIR 201, an audit row) survives a
        # power cut, not only a killed process.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # Checkpoint (and fsync) every ~40 MB of WAL instead of every 4 MB: a checkpoint
        # costs one fsync whatever its size, and small transactions (an HL7 order
        # before each ACK) otherwise pay for one every hundred commits.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.info.pop(_WRITE_FLAG, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def sqlite_file(engine: Engine) -> str | None:
    """The file of ``engine``'s SQLite database; None for another database, or one in memory."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return database


def sync_log(engine: Engine) -> None:
    """Make the commits made without a sync durable (``transaction(..., synced=False)`` of
    :mod:`broker.store.prepared`): SQLite appends every commit to its write-ahead log in
    order, so one fdatasync of the log makes them all durable. Other databases (and an
    in-memory SQLite) have nothing to sync."""
    database = sqlite_file(engine)
    if database is None:
        return
    try:
        fd = os.open(database + "-wal", os.O_RDONLY)
    except FileNotFoundError:  # no log: every commit is in the database file, synced
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def writer_lock(engine: Engine) -> AbstractContextManager[None]:
    """The lock :func:`writing` takes on SQLite (none elsewhere), to hold around several."""
    return _LOCKS.get(engine) or nullcontext()


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction; on SQLite writers queue on a lock instead of busy-sleeping."""
    lock = _LOCKS.get(engine)
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock, engine.connect() as conn:
        conn.info[_WRITE_FLAG] = True
        with conn.begin():
            yield conn
