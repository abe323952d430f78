"""the configuration snapshot each routing decision and attempt used

``config_snapshots``: one row per snapshot the service put in force (at start,
on a reload, when a removed vendor or target has drained), with the
configuration's view (JSON, without secrets) and what it keeps draining.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("snapshot", sa.String(length=64), nullable=False),
        sa.Column("previous", sa.String(length=64)),
        sa.Column("loaded_at", sa.DateTime(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("source", sa.Text()),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("draining", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_snapshots")),
    )
    op.create_index(op.f("ix_config_snapshots_snapshot"), "config_snapshots", ["snapshot"])


def downgrade() -> None:
    op.drop_index(op.f("ix_config_snapshots_snapshot"), "config_snapshots")
    op.drop_table("config_snapshots")
