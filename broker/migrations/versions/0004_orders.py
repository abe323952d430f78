"""orders, their messages and links to studies; patients; API tokens

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("route_due_at", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_studies_route_due_at"), ["route_due_at"])
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("placer_number", sa.String(length=64)),
        sa.Column("filler_number", sa.String(length=64)),
        sa.Column("accession_number", sa.String(length=64)),
        sa.Column("issuer", sa.String(length=256)),
        sa.Column("patient_id", sa.String(length=64)),
        sa.Column("issuer_of_patient_id", sa.String(length=256)),
        sa.Column("patient_name", sa.Text()),
        sa.Column("patient_birth_date", sa.String(length=8)),
        sa.Column("patient_sex", sa.String(length=16)),
        sa.Column("procedure_code", sa.String(length=64)),
        sa.Column("procedure_text", sa.Text()),
        sa.Column("modality", sa.String(length=16)),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("department", sa.Text()),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("study_uid", sa.String(length=64)),
        sa.Column("requested_procedure_id", sa.String(length=64)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("resource_id", name=op.f("uq_orders_resource_id")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        for column in (
            "accession_number",
            "placer_number",
            "filler_number",
            "study_uid",
            "patient_id",
            "updated_at",
        ):
            batch_op.create_index(batch_op.f(f"ix_orders_{column}"), [column])
    op.create_table(
        "order_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.Integer()),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("control_id", sa.String(length=64)),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_order_messages_order_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_messages")),
    )
    with op.batch_alter_table("order_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_messages_order_id"), ["order_id"])
        batch_op.create_index(batch_op.f("ix_order_messages_received_at"), ["received_at"])
    op.create_table(
        "order_links",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("matched_on", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_order_links_order_id"),
        sa.PrimaryKeyConstraint("study_uid", name=op.f("pk_order_links")),
    )
    with op.batch_alter_table("order_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_links_order_id"), ["order_id"])
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.Text()),
        sa.Column("patient_birth_date", sa.String(length=8)),
        sa.Column("patient_sex", sa.String(length=16)),
        sa.Column("merged_into", sa.Integer()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["merged_into"], ["patients.id"], name="fk_patients_merged_into"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint(
            "patient_id",
            "issuer_of_patient_id",
            name=op.f("uq_patients_patient_id_issuer_of_patient_id"),
        ),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime()),
        sa.Column("revoked_at", sa.DateTime()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )


def downgrade() -> None:
    op.drop_table("api_tokens")
    op.drop_table("patients")
    op.drop_table("order_links")
    op.drop_table("order_messages")
    op.drop_table("orders")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_route_due_at"))
        batch_op.drop_column("route_due_at")
