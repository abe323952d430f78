"""prior fetches: each job's fetch of priors (the time ledger, explain) and their instances
(served by WADO-RS to a vendor that pulls by manifest)

Revision ID: 0033
Revises: 0032
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``prior_fetches`` (one row per job: asked, done, outcome, note) and ``prior_instances``
    (the fetched instances of a job's priors)."""
    op.create_table(
        "prior_fetches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("vendor", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("asked", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("studies", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_prior_fetches_job_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prior_fetches")),
        sa.UniqueConstraint("job_id", name=op.f("uq_prior_fetches_job_id")),
    )
    op.create_index(
        op.f("ix_prior_fetches_study_uid"), "prior_fetches", ["study_uid"], unique=False
    )
    op.create_table(
        "prior_instances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_prior_instances_job_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prior_instances")),
    )
    op.create_index(
        op.f("ix_prior_instances_job_id_study_uid_series_uid"),
        "prior_instances",
        ["job_id", "study_uid", "series_uid"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_prior_instances_job_id_study_uid_series_uid"), table_name="prior_instances"
    )
    op.drop_table("prior_instances")
    op.drop_index(op.f("ix_prior_fetches_study_uid"), table_name="prior_fetches")
    op.drop_table("prior_fetches")
