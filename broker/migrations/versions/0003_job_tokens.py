"""per-job tokens for the WADO-RS endpoint

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_tokens_job_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_job_tokens_token_sha256")),
    )
    with op.batch_alter_table("job_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_tokens_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_tokens_job_id"))
    op.drop_table("job_tokens")
