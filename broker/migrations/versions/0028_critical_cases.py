"""critical-result cases and their ledger

Revision ID: 0028
Revises: 0027
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "critical_cases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer()),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64)),
        sa.Column("vendor", sa.String(length=64)),
        sa.Column("route", sa.String(length=128)),
        sa.Column("findings_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("exam_end_at", sa.DateTime(), nullable=False),
        sa.Column("deadline_at", sa.DateTime(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("next_escalation_at", sa.DateTime()),
        sa.Column("overdue_at", sa.DateTime()),
        sa.Column("acknowledged_at", sa.DateTime()),
        sa.Column("acknowledged_by", sa.String(length=160)),
        sa.Column("acknowledged_via", sa.String(length=16)),
        sa.Column("acknowledged_actor", sa.String(length=160)),
        sa.Column("note", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_critical_cases")),
        sa.UniqueConstraint("result_id", name=op.f("uq_critical_cases_result_id")),
    )
    op.create_index(op.f("ix_critical_cases_state_id"), "critical_cases", ["state", "id"])
    op.create_index(
        op.f("ix_critical_cases_state_next_escalation_at"),
        "critical_cases",
        ["state", "next_escalation_at"],
    )
    op.create_index(op.f("ix_critical_cases_study_uid"), "critical_cases", ["study_uid"])
    op.create_table(
        "critical_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("level", sa.Integer()),
        sa.Column("contact", sa.String(length=160)),
        sa.Column("channel", sa.String(length=64)),
        sa.Column("address", sa.String(length=256)),
        sa.Column("delivery_id", sa.Integer()),
        sa.Column("actor", sa.String(length=160)),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["critical_cases.id"], name="fk_critical_steps_case_id"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_critical_steps")),
    )
    op.create_index(op.f("ix_critical_steps_case_id_id"), "critical_steps", ["case_id", "id"])
    op.create_index(op.f("ix_critical_steps_delivery_id"), "critical_steps", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("critical_steps")
    op.drop_table("critical_cases")
