"""order message links: a message that made several orders is stored once

Revision ID: 0017
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """``order_message_links``: the further orders of one stored message (its first order is
    ``order_messages.order_id``)."""
    op.create_table(
        "order_message_links",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["order_messages.id"],
            name="fk_order_message_links_message_id",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name="fk_order_message_links_order_id", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("message_id", "order_id", name=op.f("pk_order_message_links")),
    )
    op.create_index(op.f("ix_order_message_links_order_id"), "order_message_links", ["order_id"])


def downgrade() -> None:
    op.drop_table("order_message_links")
