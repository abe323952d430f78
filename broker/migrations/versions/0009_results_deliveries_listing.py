"""indexes of the REST API's results and deliveries listings (keyset on the id, newest first)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_results_vendor_id": ("results", ["vendor", "id"]),
    "ix_results_state_id": ("results", ["state", "id"]),
    "ix_deliveries_state_id": ("deliveries", ["state", "id"]),
    "ix_deliveries_target_id": ("deliveries", ["target", "id"]),
}


def upgrade() -> None:
    for name, (table, columns) in _INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _columns) in _INDEXES.items():
        op.drop_index(name, table_name=table)
