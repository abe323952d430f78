"""pseudonyms sent with a study: a prior's pseudonyms name the study whose job sent them,
so retention purges them with it (the prior itself is often not in the index)

Revision ID: 0041
Revises: 0040
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0041"
down_revision = "0040"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pseudonyms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_with", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_pseudonyms_sent_with"), "pseudonyms", ["sent_with"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pseudonyms_sent_with"), table_name="pseudonyms")
    with op.batch_alter_table("pseudonyms", schema=None) as batch_op:
        batch_op.drop_column("sent_with")
