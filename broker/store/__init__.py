"""The store: SQLAlchemy on SQLite (default) or PostgreSQL, schema by Alembic."""

from broker.store.engine import make_engine, writing
from broker.store.jobs import Created, JobChangedError, JobStore
from broker.store.studies import Indexed, StudyStore

__all__ = [
    "Created",
    "Indexed",
    "JobChangedError",
    "JobStore",
    "StudyStore",
    "make_engine",
    "writing",
]
