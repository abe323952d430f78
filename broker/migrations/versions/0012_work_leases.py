"""claims with leases and per-vendor concurrency for the job engine

``jobs`` and ``deliveries`` get the claim of the worker whose attempt holds
them (``claimed_by``, ``lease_until``); their histories get the configuration
snapshot and the worker of each step; ``work_lanes`` holds one row per lane,
locked by claims. A job or delivery left in ``sending`` by an older version has
no lease: the engine treats it as interrupted, as that version did at a start.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_ITEMS = ("jobs", "deliveries")
_EVENTS = ("job_events", "delivery_events")


def upgrade() -> None:
    for table in _ITEMS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
            batch_op.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
    for table in _EVENTS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("snapshot", sa.String(length=64), nullable=True))
            batch_op.add_column(sa.Column("worker", sa.String(length=128), nullable=True))
    op.create_table(
        "work_lanes",
        sa.Column("lane", sa.String(length=96), nullable=False),
        sa.PrimaryKeyConstraint("lane", name=op.f("pk_work_lanes")),
    )


def downgrade() -> None:
    op.drop_table("work_lanes")
    for table in _EVENTS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("worker")
            batch_op.drop_column("snapshot")
    for table in _ITEMS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("lease_until")
            batch_op.drop_column("claimed_by")
