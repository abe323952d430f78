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

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


class Prepared:
    """One compiled statement of one engine (see the module)."""

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        dialect = engine.dialect
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
            processor = bind.type.bind_processor(dialect)
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

    def first(self, conn: Connection, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run in ``conn``'s transaction; the first row returned, or None."""
        try:
            params = self.parameters(values)
        except (TypeError, ValueError) as exc:  # a value its type refuses, as SQLAlchemy says
            raise StatementError(str(exc), self.sql, None, exc, hide_parameters=True) from exc
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, params)
            row = cursor.fetchone()
        except self._error as exc:
            raise DBAPIError.instance(
                self.sql, params, exc, self._error, hide_parameters=True
            ) from exc
        finally:
            cursor.close()
        return None if row is None else tuple(row)


__all__ = ["Prepared"]
