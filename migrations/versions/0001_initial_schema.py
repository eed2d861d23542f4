"""Initial schema: workflows, instances, steps, workers, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 14:58:51.194685
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fuseline_workers",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("workflows", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fuseline_workers")),
    )
    op.create_table(
        "fuseline_workflows",
        sa.Column("workflow_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("schema_hash", sa.String(length=64), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("workflow_id", "version", name=op.f("pk_fuseline_workflows")),
    )
    op.create_table(
        "fuseline_instances",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("workflow_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_id", "version"],
            ["fuseline_workflows.workflow_id", "fuseline_workflows.version"],
            name=op.f("fk_fuseline_instances_workflow_id_version_fuseline_workflows"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fuseline_instances")),
    )
    op.create_index("ix_fuseline_instances_created_at", "fuseline_instances", ["created_at"], unique=False)
    op.create_index(
        "ix_fuseline_instances_status_created_at",
        "fuseline_instances",
        ["status", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_fuseline_instances_workflow_id_created_at",
        "fuseline_instances",
        ["workflow_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "fuseline_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("instance_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("step_name", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("worker_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["fuseline_instances.id"],
            name=op.f("fk_fuseline_events_instance_id_fuseline_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fuseline_events")),
    )
    op.create_index(
        "ix_fuseline_events_instance_id_id", "fuseline_events", ["instance_id", "id"], unique=False
    )

    op.create_table(
        "fuseline_steps",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("instance_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("workflow_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("action", sa.String(length=200), nullable=True),
        sa.Column("inputs_from", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("reported_by", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["fuseline_instances.id"],
            name=op.f("fk_fuseline_steps_instance_id_fuseline_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fuseline_steps")),
        sa.UniqueConstraint("instance_id", "name", name=op.f("uq_fuseline_steps_instance_id_name")),
    )
    op.create_index(
        "ix_fuseline_steps_queued",
        "fuseline_steps",
        ["workflow_id", "version", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'QUEUED'"),
        sqlite_where=sa.text("state = 'QUEUED'"),
    )
    op.create_index(
        "ix_fuseline_steps_running_lease",
        "fuseline_steps",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("state = 'RUNNING'"),
        sqlite_where=sa.text("state = 'RUNNING'"),
    )
    op.create_index(
        "ix_fuseline_steps_running_worker",
        "fuseline_steps",
        ["worker_id"],
        unique=False,
        postgresql_where=sa.text("state = 'RUNNING'"),
        sqlite_where=sa.text("state = 'RUNNING'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_fuseline_steps_running_worker",
        table_name="fuseline_steps",
        postgresql_where=sa.text("state = 'RUNNING'"),
        sqlite_where=sa.text("state = 'RUNNING'"),
    )
    op.drop_index(
        "ix_fuseline_steps_running_lease",
        table_name="fuseline_steps",
        postgresql_where=sa.text("state = 'RUNNING'"),
        sqlite_where=sa.text("state = 'RUNNING'"),
    )
    op.drop_index(
        "ix_fuseline_steps_queued",
        table_name="fuseline_steps",
        postgresql_where=sa.text("state = 'QUEUED'"),
        sqlite_where=sa.text("state = 'QUEUED'"),
    )

    op.drop_table("fuseline_steps")
    op.drop_index("ix_fuseline_events_instance_id_id", table_name="fuseline_events")

    op.drop_table("fuseline_events")
    op.drop_index("ix_fuseline_instances_workflow_id_created_at", table_name="fuseline_instances")
    op.drop_index("ix_fuseline_instances_status_created_at", table_name="fuseline_instances")
    op.drop_index("ix_fuseline_instances_created_at", table_name="fuseline_instances")

    op.drop_table("fuseline_instances")
    op.drop_table("fuseline_workflows")
    op.drop_table("fuseline_workers")
