"""study completion from evidence: study history, MPPS and IAN notices

Revision ID: 0029
Revises: 0028
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``study_events`` (a study's history: what completed it and why) and
    ``procedure_notices`` (MPPS and IAN received, with the instances they reference)."""
    op.create_table(
        "study_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_events")),
    )
    op.create_index(
        op.f("ix_study_events_study_uid_id"), "study_events", ["study_uid", "id"], unique=False
    )
    op.create_index(op.f("ix_study_events_kind_at"), "study_events", ["kind", "at"], unique=False)
    op.create_table(
        "procedure_notices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("referenced", sa.Text(), nullable=False),
        sa.Column("dataset_json", sa.Text(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("called_ae", sa.String(length=16), nullable=False),
        sa.Column("peer_address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_procedure_notices")),
        sa.UniqueConstraint(
            "kind", "sop_instance_uid", name=op.f("uq_procedure_notices_kind_sop_instance_uid")
        ),
    )
    op.create_index(
        op.f("ix_procedure_notices_study_uid"), "procedure_notices", ["study_uid"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_procedure_notices_study_uid"), table_name="procedure_notices")
    op.drop_table("procedure_notices")
    op.drop_index(op.f("ix_study_events_kind_at"), table_name="study_events")
    op.drop_index(op.f("ix_study_events_study_uid_id"), table_name="study_events")
    op.drop_table("study_events")
