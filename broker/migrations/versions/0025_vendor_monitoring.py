"""know how each AI product performs: lane pauses, verdicts, final reports, alerts

Revision ID: 0025
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """A lane (``vendor:NAME``) can be paused by an operator: its items wait, unclaimed.
    A radiologist's verdict on an AI finding; the RIS's final reports (verbatim) and how each
    finding compares with them; the alerts the vendor watch raised (drift, version change,
    missing results, failed canaries)."""
    with op.batch_alter_table("work_lanes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("paused_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("paused_by", sa.String(length=160), nullable=True))
        batch_op.add_column(sa.Column("pause_reason", sa.Text(), nullable=True))
    op.create_table(
        "finding_verdicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("finding_index", sa.Integer(), nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=160), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("corrected_value", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"], ["results.id"], name="fk_finding_verdicts_result_id"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finding_verdicts")),
    )
    op.create_index(
        op.f("ix_finding_verdicts_result_id_finding_index_id"),
        "finding_verdicts",
        ["result_id", "finding_index", "id"],
    )
    op.create_index(op.f("ix_finding_verdicts_vendor_at"), "finding_verdicts", ["vendor", "at"])
    op.create_table(
        "final_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=True),
        sa.Column("sender", sa.String(length=160), nullable=False),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("codes_json", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_final_reports")),
    )
    op.create_index(
        op.f("ix_final_reports_accession_number"), "final_reports", ["accession_number"]
    )
    op.create_index(op.f("ix_final_reports_study_uid"), "final_reports", ["study_uid"])
    op.create_table(
        "report_matches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("finding_index", sa.Integer(), nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=160), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("basis", sa.String(length=16), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["report_id"], ["final_reports.id"], name="fk_report_matches_report_id"
        ),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_report_matches_result_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_matches")),
        sa.UniqueConstraint(
            "report_id",
            "result_id",
            "finding_index",
            name=op.f("uq_report_matches_report_id_result_id_finding_index"),
        ),
    )
    op.create_index(
        op.f("ix_report_matches_result_id_finding_index"),
        "report_matches",
        ["result_id", "finding_index"],
    )
    op.create_table(
        "vendor_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=False),
        sa.Column("code", sa.String(length=160), nullable=True),
        sa.Column("raised_at", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("cleared_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vendor_alerts")),
    )
    op.create_index(
        op.f("ix_vendor_alerts_vendor_kind_raised_at"),
        "vendor_alerts",
        ["vendor", "kind", "raised_at"],
    )


def downgrade() -> None:
    op.drop_table("vendor_alerts")
    op.drop_table("report_matches")
    op.drop_table("final_reports")
    op.drop_table("finding_verdicts")
    with op.batch_alter_table("work_lanes", schema=None) as batch_op:
        batch_op.drop_column("pause_reason")
        batch_op.drop_column("paused_by")
        batch_op.drop_column("paused_until")
        batch_op.drop_column("paused_at")
