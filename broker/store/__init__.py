"""The store: SQLAlchemy on SQLite (default) or PostgreSQL, schema by Alembic."""

from broker.store.engine import make_engine, writing
from broker.store.studies import Indexed, StudyStore

__all__ = ["Indexed", "StudyStore", "make_engine", "writing"]
