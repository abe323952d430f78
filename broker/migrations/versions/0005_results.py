"""results of AI vendors and their DICOM objects

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer()),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=64)),
        sa.Column("calling_ae", sa.String(length=16)),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("findings_json", sa.Text()),
        sa.Column("expected_objects", sa.Integer()),
        sa.Column("quiet_seconds", sa.Float(), nullable=False),
        sa.Column("vendor_complete", sa.Boolean(), nullable=False),
        sa.Column("complete_reason", sa.String(length=16)),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("due_at", sa.DateTime()),
        sa.Column("completed_at", sa.DateTime()),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_results_job_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_results_job_id"), ["job_id"])
        batch_op.create_index(batch_op.f("ix_results_study_uid"), ["study_uid"])
        batch_op.create_index(batch_op.f("ix_results_state_due_at"), ["state", "due_at"])
    op.create_table(
        "result_objects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=16)),
        sa.Column("peer_address", sa.String(length=64)),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("receive_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_result_objects_result_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_result_objects_sop_instance_uid")),
    )
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_result_objects_result_id"), ["result_id"])


def downgrade() -> None:
    op.drop_table("result_objects")
    op.drop_table("results")
