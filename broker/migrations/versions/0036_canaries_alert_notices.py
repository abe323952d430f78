"""canaries and alert notifications: a claim row per vendor and period of the canary timer,
and the webhook notification of each vendor alert

Revision ID: 0036
Revises: 0035
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``canary_runs``: one row per vendor and period (unique, so that of several processes
    one makes the period's canary), its synthetic study and job, its deadline and outcome;
    ``vendor_alerts.delivery_id``: the alert's webhook notification (a delivery)."""
    op.create_table(
        "canary_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("deadline_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canary_runs")),
        sa.UniqueConstraint("vendor", "period", name=op.f("uq_canary_runs_vendor_period")),
    )
    op.create_index(op.f("ix_canary_runs_state"), "canary_runs", ["state"])
    op.create_index(op.f("ix_canary_runs_study_uid"), "canary_runs", ["study_uid"])
    with op.batch_alter_table("vendor_alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_vendor_alerts_delivery_id", ["delivery_id"])


def downgrade() -> None:
    with op.batch_alter_table("vendor_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_vendor_alerts_delivery_id")
        batch_op.drop_column("delivery_id")
    op.drop_index(op.f("ix_canary_runs_study_uid"), table_name="canary_runs")
    op.drop_index(op.f("ix_canary_runs_state"), table_name="canary_runs")
    op.drop_table("canary_runs")
