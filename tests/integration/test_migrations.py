"""Migrations tested as upgrades that carry data.

For every earlier schema revision: a store is created at that revision, one row is put
into each of its tables with raw SQL (every column given a value of its type, foreign
keys pointing at the rows of the tables they reference), the store is upgraded to the
newest revision, and every row must still be there with every value it had. On
PostgreSQL the whole chain runs once, rows added at each revision as its tables appear.
A migration that drops, retypes or rewrites a column fails here until it says (in this
file) what becomes of the data.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy import types as sqltypes

from broker.store import make_engine
from broker.store.engine import writing
from tests.databases import PG_URL, alembic_config, upgrade_to

Rows = dict[str, dict[str, Any]]


def _revisions() -> list[str]:
    """Every revision from the first to the newest, in order."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def _value(table: str, column: dict[str, Any], n: int) -> Any:
    kind = column["type"]
    if isinstance(kind, sqltypes.Boolean):
        return True
    if isinstance(kind, sqltypes.Integer):
        return 7000 + n
    if isinstance(kind, sqltypes.Float | sqltypes.Numeric):
        return 12.5
    if isinstance(kind, sqltypes.DateTime):
        return datetime(2024, 2, 3, 4, 5, 6)
    if isinstance(kind, sqltypes.Date):
        return date(2024, 2, 3)
    if isinstance(kind, sqltypes.LargeBinary):
        return b"\x00raw\xff"
    if isinstance(kind, sqltypes.JSON):
        return {"key": table}
    length = getattr(kind, "length", None) or 64
    return f"{table}.{column['name']}"[:length]


def _order(engine: Engine, tables: list[str], done: set[str]) -> list[str]:
    """``tables`` with every table after those its foreign keys reference (``done``: filled)."""
    inspector = inspect(engine)
    ordered: list[str] = []
    pending = list(tables)
    while pending:
        for table in pending:
            refs = {fk["referred_table"] for fk in inspector.get_foreign_keys(table)}
            if refs - {table} <= done | set(ordered):
                ordered.append(table)
                pending.remove(table)
                break
        else:
            raise AssertionError(f"foreign keys form a cycle among {pending}")
    return ordered


def _fill(engine: Engine, rows: Rows) -> None:
    """One row in each table that has none of ours yet; ``rows`` gets what was stored."""
    inspector = inspect(engine)
    new = [t for t in inspector.get_table_names() if t != "alembic_version" and t not in rows]
    with writing(engine) as conn:
        for table in _order(engine, new, set(rows)):
            values: dict[str, Any] = {}
            for n, column in enumerate(inspector.get_columns(table)):
                values[column["name"]] = _value(table, column, n)
            for fk in inspector.get_foreign_keys(table):
                target = rows.get(fk["referred_table"], values)
                for mine, theirs in zip(
                    fk["constrained_columns"], fk["referred_columns"], strict=True
                ):
                    values[mine] = target[theirs]
            names = list(values)
            conn.execute(
                text(
                    f"INSERT INTO {table} ({', '.join(names)}) "
                    f"VALUES ({', '.join(':' + n for n in names)})"
                ),
                {n: _stored(values[n]) for n in names},
            )
            rows[table] = _read(conn, table, names)


def _stored(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _read(conn: Any, table: str, names: list[str]) -> dict[str, Any]:
    found = conn.execute(text(f"SELECT {', '.join(names)} FROM {table}")).mappings().all()
    assert len(found) == 1, f"{table}: {len(found)} rows"
    return dict(found[0])


def _assert_carried(engine: Engine, rows: Rows) -> None:
    """Every table, column and value in ``rows`` is in the store as it was."""
    lost = []
    inspector = inspect(engine)
    with engine.connect() as conn:
        for table, values in rows.items():
            if not inspector.has_table(table):
                lost.append(f"table {table}")
                continue
            columns = {c["name"] for c in inspector.get_columns(table)}
            missing = [c for c in values if c not in columns]
            lost += [f"column {table}.{c}" for c in missing]
            now = _read(conn, table, [c for c in values if c in columns])
            lost += [
                f"{table}.{c}: {values[c]!r} became {now[c]!r}" for c in now if now[c] != values[c]
            ]
    assert not lost, lost


def _sqlite(folder: Path) -> Engine:
    return make_engine(f"sqlite:///{folder / 'radbridge.db'}")


@pytest.mark.parametrize("revision", _revisions()[:-1])
def test_upgrade_from_each_revision_carries_every_row(revision: str, tmp_path: Path) -> None:
    """A SQLite store at ``revision`` with a row in every table upgrades to the newest
    revision with every table, column and value it held."""
    engine = _sqlite(tmp_path)
    try:
        upgrade_to(engine, revision)
        rows: Rows = {}
        _fill(engine, rows)
        assert rows, "no tables at this revision"
        upgrade_to(engine, "heads")
        _assert_carried(engine, rows)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_upgrades_through_the_whole_chain_carrying_every_row() -> None:
    """On PostgreSQL, a store started at the first revision and upgraded one revision at a
    time, with a row put in each table as it appears, holds every row, column and value at
    the newest revision."""
    schema = f"t_{uuid.uuid4().hex}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        rows: Rows = {}
        for revision in _revisions():
            upgrade_to(engine, revision)
            _fill(engine, rows)
        _assert_carried(engine, rows)
        assert len(rows) >= 20
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
