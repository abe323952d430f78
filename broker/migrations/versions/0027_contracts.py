"""contracts: the terms each job is routed under, quota counters, usage with contracts

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

_USAGE_COLUMNS = ("contract", "charge", "payer", "price_code", "province")


def upgrade() -> None:
    """``job_terms`` (one row per study x vendor product routed under a contract),
    ``contract_counters`` (quota use per contract and period) and the contract columns of
    ``usage``."""
    op.create_table(
        "job_terms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("contract", sa.String(length=64), nullable=True),
        sa.Column("charge", sa.String(length=16), nullable=True),
        sa.Column("period", sa.String(length=16), nullable=True),
        sa.Column("payer", sa.String(length=128), nullable=True),
        sa.Column("price_code", sa.String(length=128), nullable=True),
        sa.Column("province", sa.String(length=128), nullable=True),
        sa.Column("price", sa.String(length=32), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("alert", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_terms")),
        sa.UniqueConstraint("study_uid", "vendor", name=op.f("uq_job_terms_study_uid_vendor")),
    )
    op.create_index(
        op.f("ix_job_terms_contract_created_at"), "job_terms", ["contract", "created_at"]
    )
    op.create_table(
        "contract_counters",
        sa.Column("contract", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("contract", "period", name=op.f("pk_contract_counters")),
    )
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("contract", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("charge", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("payer", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("price_code", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("province", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        for name in reversed(_USAGE_COLUMNS):
            batch_op.drop_column(name)
    op.drop_table("contract_counters")
    op.drop_index(op.f("ix_job_terms_contract_created_at"), table_name="job_terms")
    op.drop_table("job_terms")
