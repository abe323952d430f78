"""Empty stores for tests: a fresh SQLite file, or a PostgreSQL schema of one's own.

PostgreSQL runs on 127.0.0.1:5432 with trust authentication and a database
``test``; each store gets a new schema, dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, text

from broker.store import make_engine
from broker.store.engine import writing
from broker.store.migrate import MIGRATIONS, migrate

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
#: Parametrize a fixture with this to run on both databases.
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def empty_database(kind: str, folder: Path, *, migrated: bool = True) -> Iterator[Engine]:
    """An empty store of ``kind`` (``sqlite``, or a schema of its own in ``postgresql``)."""
    if kind == "sqlite":
        eng = make_engine(f"sqlite:///{folder / 'store' / 'radbridge.db'}")
        try:
            if migrated:
                migrate(eng)
            yield eng
        finally:
            eng.dispose()
        return
    schema = f"t_{uuid.uuid4().hex}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng = make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        if migrated:
            migrate(eng)
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def alembic_config() -> AlembicConfig:
    """The Alembic configuration of radbridge's migrations."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade_to(engine: Engine, revision: str) -> None:
    """Bring the store to schema ``revision`` (an older one than the newest: a store made by
    an earlier release)."""
    cfg = alembic_config()
    with writing(engine) as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL (as radbridge's settings take it) of a new PostgreSQL database, dropped after."""
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
