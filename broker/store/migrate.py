"""Schema migration with Alembic, applied on start (kept apart: listener processes skip it)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from broker.model.errors import StoreError
from broker.store.engine import writing

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with writing(engine) as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the store at {engine.url!r}: {exc}") from exc
