"""alert dedup: one vendor alert per condition, however many processes raise it at once

Revision ID: 0039
Revises: 0038
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0039"
down_revision = "0038"
branch_labels = None
depends_on = None


def _dedup(kind: str, vendor: str, code: str | None, key: object) -> str:
    """The condition of an alert, hashed (a frozen copy of ``broker.store.alerts.dedup``)."""
    text = json.dumps([kind, vendor, code, key], default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _key(detail: str) -> object:
    try:
        parsed = json.loads(detail)
    except ValueError:
        return None
    return parsed.get("key") if isinstance(parsed, dict) else None


def upgrade() -> None:
    """``vendor_alerts.dedup``: the SHA-256 of the alert's kind, vendor, code and key,
    unique, so that raising an alert is one insert that a second process's insert of the
    same condition cannot repeat. Existing rows get theirs; of several rows of one
    condition (raised twice before this), the first keeps it and the others none."""
    with op.batch_alter_table("vendor_alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dedup", sa.String(length=64), nullable=True))
    alerts = sa.table(
        "vendor_alerts",
        sa.column("id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("vendor", sa.String),
        sa.column("code", sa.String),
        sa.column("detail", sa.Text),
        sa.column("dedup", sa.String),
    )
    conn = op.get_bind()
    seen: set[str] = set()
    rows = conn.execute(
        sa.select(
            alerts.c.id, alerts.c.kind, alerts.c.vendor, alerts.c.code, alerts.c.detail
        ).order_by(alerts.c.id)
    ).all()
    for row in rows:
        dedup = _dedup(row.kind, row.vendor, row.code, _key(row.detail))
        if dedup in seen:
            continue
        seen.add(dedup)
        conn.execute(sa.update(alerts).where(alerts.c.id == row.id).values(dedup=dedup))
    with op.batch_alter_table("vendor_alerts", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_vendor_alerts_dedup", ["dedup"])


def downgrade() -> None:
    with op.batch_alter_table("vendor_alerts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_vendor_alerts_dedup", type_="unique")
        batch_op.drop_column("dedup")
