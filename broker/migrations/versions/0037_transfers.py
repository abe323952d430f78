"""transfers: studies arriving from site radbridges over the site-to-hub link

Revision ID: 0037
Revises: 0036
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``transfers``: one row per study a site sends (its manifest, state, sizes); its parts
    wait in the spool's ``transfers/`` folder until the commit."""
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("site", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("peer_address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("committed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.UniqueConstraint("site", "key", name=op.f("uq_transfers_site_key")),
    )
    op.create_index(
        op.f("ix_transfers_state_updated_at"), "transfers", ["state", "updated_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_transfers_state_updated_at"), table_name="transfers")
    op.drop_table("transfers")
