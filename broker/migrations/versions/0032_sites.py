"""sites: studies and orders attributed to a site, tokens and console users scoped to sites

Revision ID: 0032
Revises: 0031
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``studies.site`` and ``orders.site`` (NULL: the one implicit site, as before);
    ``api_tokens.sites`` and ``console_users.sites`` (comma-separated; NULL: every site)."""
    for table in ("studies", "orders"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("site", sa.String(length=32), nullable=True))
            batch_op.create_index(f"ix_{table}_site", ["site"])
    for table in ("api_tokens", "console_users"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("sites", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in ("api_tokens", "console_users"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("sites")
    for table in ("studies", "orders"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_site")
            batch_op.drop_column("site")
