"""job tokens' manifest in flight: until when a job's manifest may still be on its way to
the vendor, so that a cancellation (``DELETE {url}/{job_id}``) waits for it

Revision ID: 0043
Revises: 0042
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0043"
down_revision = "0042"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("posting_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_tokens", schema=None) as batch_op:
        batch_op.drop_column("posting_until")
