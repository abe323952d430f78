"""jobs by route: the canary jobs (route ``(canary)``) that counts of jobs by state leave
out are counted from an index, so those counts stay index-only

Revision ID: 0042
Revises: 0041
"""

from __future__ import annotations

from alembic import op

revision = "0042"
down_revision = "0041"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_route_vendor_state", "jobs", ["route", "vendor", "state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_route_vendor_state", table_name="jobs")
