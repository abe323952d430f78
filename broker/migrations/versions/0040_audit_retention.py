"""audit retention: the audit trail's purges, and deletes allowed only below their horizon

Revision ID: 0040
Revises: 0039
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0040"
down_revision = "0039"
branch_labels = None
depends_on = None

_REFUSE = "the audit table is append-only"
_REFUSE_PURGES = "the audit purges are append-only"
#: An audit row may be deleted only when a recorded purge's horizon is past it.
_BELOW_HORIZON = "EXISTS (SELECT 1 FROM audit_purges p WHERE p.before > OLD.at)"


def upgrade() -> None:
    op.create_table(
        "audit_purges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("before", sa.DateTime(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_purges")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION radbridge_audit_append_only() RETURNS trigger AS $$ "
            f"BEGIN IF TG_OP = 'DELETE' AND {_BELOW_HORIZON} THEN RETURN OLD; END IF; "
            f"RAISE EXCEPTION '{_REFUSE}'; END $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE FUNCTION radbridge_audit_purges_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_REFUSE_PURGES}'; END $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER audit_purges_append_only BEFORE UPDATE OR DELETE ON audit_purges "
            "FOR EACH ROW EXECUTE FUNCTION radbridge_audit_purges_append_only()"
        )
    else:
        op.execute("DROP TRIGGER audit_no_delete")
        op.execute(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
            f"WHEN NOT {_BELOW_HORIZON} BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END"
        )
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_purges_no_{verb.lower()} BEFORE {verb} ON audit_purges "
                f"BEGIN SELECT RAISE(ABORT, '{_REFUSE_PURGES}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION radbridge_audit_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_REFUSE}'; END $$ LANGUAGE plpgsql"
        )
        op.execute("DROP TRIGGER IF EXISTS audit_purges_append_only ON audit_purges")
        op.execute("DROP FUNCTION IF EXISTS radbridge_audit_purges_append_only()")
    else:
        op.execute("DROP TRIGGER audit_no_delete")
        op.execute(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END"
        )
    op.drop_table("audit_purges")
