"""routing tags of each series (every attribute a tag.* condition may name)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``series.tags``: JSON text of the first indexed instance's tags; NULL for series
    indexed before (routing then uses what the other columns hold, as before)."""
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("tags")
