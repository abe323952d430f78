"""contact lists: a critical-result case keeps the escalation list it uses (its route's or
its site's)

Revision ID: 0034
Revises: 0033
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``critical_cases.contact_list`` (NULL: the default list, as before)."""
    with op.batch_alter_table("critical_cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("contact_list", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("critical_cases", schema=None) as batch_op:
        batch_op.drop_column("contact_list")
