"""retention: studies and result objects purged from the spool stay listed

Revision ID: 0015
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``studies.purged_at`` with the instances and bytes the purged copy held (its instance
    rows are removed); ``result_objects.purged_at``. NULL: still in the spool."""
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("purged_instances", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("purged_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("purged_bytes")
        batch_op.drop_column("purged_instances")
        batch_op.drop_column("purged_at")
