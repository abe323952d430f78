"""corrections: rejection notes, patient changes and cancelled orders that correct results

Revision ID: 0031
Revises: 0029
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``corrections`` and the correction a delivery carries out (``deliveries.correction_id``)."""
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("cause", sa.String(length=32), nullable=False),
        sa.Column("reason_scheme", sa.String(length=16), nullable=False),
        sa.Column("reason_value", sa.String(length=16), nullable=False),
        sa.Column("reason_meaning", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=160), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrections")),
    )
    op.create_index(
        op.f("ix_corrections_study_uid_id"), "corrections", ["study_uid", "id"], unique=False
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("correction_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("correction_id")
    op.drop_index(op.f("ix_corrections_study_uid_id"), table_name="corrections")
    op.drop_table("corrections")
