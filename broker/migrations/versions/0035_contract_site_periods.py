"""contract site periods: room for a quota counted per site (``2026-05@township-a``)

Revision ID: 0035
Revises: 0034
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None

TABLES = ("job_terms", "contract_counters")


def upgrade() -> None:
    """``job_terms.period`` and ``contract_counters.period`` from 16 to 48 characters: a
    period, ``@`` and a site id (at most 24)."""
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "period", type_=sa.String(length=48), existing_type=sa.String(length=16)
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "period", type_=sa.String(length=16), existing_type=sa.String(length=48)
            )
