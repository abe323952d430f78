"""shadow mode: jobs and usage rows of silent trials

Revision ID: 0023
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``jobs.shadow``: why routing made the job a silent trial (``configuration``,
    ``contract``, ``certificate``; NULL: live). ``usage.shadow``: the row counts a silent
    trial (trial, never billed, outside the trial quota)."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shadow", sa.String(length=16), nullable=True))
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("shadow")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("shadow")
