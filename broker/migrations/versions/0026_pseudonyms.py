"""pseudonyms of de-identified studies

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``pseudonyms``: each value radbridge replaced in what it sent a vendor with
    ``deidentify:``, and the original (the only way back from a pseudonym)."""
    op.create_table(
        "pseudonyms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("original", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pseudonyms")),
        sa.UniqueConstraint("pseudonym", name=op.f("uq_pseudonyms_pseudonym")),
    )
    op.create_index(op.f("ix_pseudonyms_study_uid"), "pseudonyms", ["study_uid"])


def downgrade() -> None:
    op.drop_table("pseudonyms")
