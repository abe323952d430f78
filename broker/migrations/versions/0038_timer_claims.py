"""timer claims: which node's timer does a timed action when several nodes share the store

Revision ID: 0038
Revises: 0037
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``timer_claims``: one row per timer (its holder, and until when the claim holds)."""
    op.create_table(
        "timer_claims",
        sa.Column("timer", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("timer", name=op.f("pk_timer_claims")),
    )


def downgrade() -> None:
    op.drop_table("timer_claims")
