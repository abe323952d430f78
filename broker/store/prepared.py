"""A statement compiled once and run on the database driver's own cursor.

SQLAlchemy Core costs about 0.1 ms of Python per execution of a large statement
(its cache key walked, the execution context built, the parameters processed);
indexing a received instance runs four, for every C-STORE. A
:class:`Prepared` statement keeps its compiled text, the order of its parameters
and their types' bind processors, and runs on the DBAPI cursor of the
connection's transaction with the same parameters SQLAlchemy would send, in a
few microseconds. Errors are raised as SQLAlchemy's (``StatementError`` for a value
its type refuses, ``DBAPIError`` from the driver), as from ``Connection.execute``, with
the parameters hidden.

Only what the hot path needs: one row (or None) back, values unprocessed (text
and integers). Everything else goes through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from broker.store.engine import writer_lock


class Prepared:
    """One compiled statement of one engine (see the module)."""

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        dialect = engine.dialect
        self.statement = statement
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        names = compiled.bind_names
        #: The statement's own values (literals the statement binds), by parameter name.
        self._defaults = {
            names[bind]: bind.effective_value
            for bind in compiled.binds.values()
            if not bind.required
        }
        self._names: list[str] | None = (
            list(compiled.positiontup) if compiled.positiontup is not None else None
        )
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for bind in compiled.binds.values():
            # The dialect's own type (SQLite's DATETIME writes its text format), as SQLAlchemy
            # processes a bound value.
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[names[bind]] = processor
        self._error: type[Exception] = dialect.loaded_dbapi.Error

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values`` (the statement's named binds)."""
        merged = {**self._defaults, **values}
        for name, processor in self._processors.items():
            merged[name] = processor(merged[name])
        if self._names is None:
            return merged
        return tuple(merged[name] for name in self._names)

    def first(self, driver: Any, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run in ``driver``'s transaction (a :class:`Transaction`, or a SQLAlchemy
        ``Connection``'s DBAPI ``.connection``); the first row returned, or None."""
        try:
            params = self.parameters(values)
        except (TypeError, ValueError) as exc:  # a value its type refuses, as SQLAlchemy says
            raise StatementError(str(exc), self.sql, None, exc, hide_parameters=True) from exc
        with _driver_errors(self._error, self.sql):
            cursor = driver.cursor()
            try:
                cursor.execute(self.sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
        return None if row is None else tuple(row)


@contextmanager
def _driver_errors(error: type[Exception], sql: str) -> Iterator[None]:
    """The driver's errors raised as SQLAlchemy's ``DBAPIError``, parameters hidden."""
    try:
        yield
    except error as exc:
        raise DBAPIError.instance(sql, None, exc, error, hide_parameters=True) from exc


class Transaction:
    """A write transaction on a DBAPI connection (:func:`transaction`)."""

    def __init__(self, driver: Any, error: type[Exception]) -> None:
        self.driver = driver
        self._error = error

    def cursor(self) -> Any:
        """A cursor of the transaction's connection (as :meth:`Prepared.first` takes)."""
        return self.driver.cursor()

    def execute(self, sql: str) -> None:
        """Run a statement without parameters or rows (a savepoint)."""
        with _driver_errors(self._error, sql):
            cursor = self.driver.cursor()
            try:
                cursor.execute(sql)
            finally:
                cursor.close()


@contextmanager
def transaction(engine: Engine, *, synced: bool = True) -> Iterator[Transaction]:
    """A write transaction on a DBAPI connection of ``engine``'s pool: what
    :func:`broker.store.engine.writing` does (the writer lock and ``BEGIN IMMEDIATE`` on
    SQLite), without SQLAlchemy's connection and transaction objects; committed when the
    block ends, rolled back if it raises. Driver errors are raised as ``DBAPIError``.

    ``synced=False``: on SQLite the commit is not synced (``synchronous=NORMAL``): it
    survives a killed process, not a power cut, until the next synced commit or
    :func:`broker.store.engine.sync_log`. Other databases sync every commit."""
    error: type[Exception] = engine.dialect.loaded_dbapi.Error
    unsynced = not synced and engine.dialect.name == "sqlite"
    with writer_lock(engine):
        with _driver_errors(error, "connect"):
            done = Transaction(engine.raw_connection(), error)
        try:
            if unsynced:
                done.execute("PRAGMA synchronous=NORMAL")
            if engine.dialect.name == "sqlite":
                done.execute("BEGIN IMMEDIATE")
            yield done
            with _driver_errors(error, "COMMIT"):
                done.driver.commit()
        except BaseException:
            with suppress(Exception):
                done.driver.rollback()
            raise
        finally:
            if unsynced:  # the pool's connections sync their commits
                with suppress(Exception):
                    done.execute("PRAGMA synchronous=FULL")
            done.driver.close()


__all__ = ["Prepared", "Transaction", "transaction"]
