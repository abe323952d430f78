"""identity conflicts: data that named another patient, refused or kept flagged

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=24), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("sender", sa.String(length=160), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("matched_on", sa.String(length=32), nullable=False),
        sa.Column("study_uid", sa.String(length=64)),
        sa.Column("order_id", sa.Integer()),
        sa.Column("held_patient_id", sa.String(length=64)),
        sa.Column("held_issuer", sa.String(length=256)),
        sa.Column("claimed_patient_id", sa.String(length=64)),
        sa.Column("claimed_issuer", sa.String(length=256)),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Integer()),
        sa.Column("occurrences", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.Column("last_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime()),
        sa.Column("resolved_by", sa.String(length=160)),
        sa.Column("resolution", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_conflicts")),
    )
    op.create_index(op.f("ix_identity_conflicts_state_id"), "identity_conflicts", ["state", "id"])
    op.create_index(
        op.f("ix_identity_conflicts_kind_study_uid"), "identity_conflicts", ["kind", "study_uid"]
    )
    op.create_index(op.f("ix_identity_conflicts_order_id"), "identity_conflicts", ["order_id"])


def downgrade() -> None:
    op.drop_table("identity_conflicts")
