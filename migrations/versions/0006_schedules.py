"""Schedules: cron and interval schedules that running workers fire, once per tick.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 02:00:00.000000

- ``fuseline_schedules``: one row per schedule, named (the primary key). It
  names the workflow definition it dispatches (``workflow_id``/``version``,
  registered when the schedule is added), its spec (``cron`` with a
  ``timezone``, or ``every`` whole seconds), the ``inputs`` (JSON text), and
  ``next_fire_at`` (UTC): workers select the unpaused rows due by the database
  clock through ``ix_fuseline_schedules_next_fire_at``, lock them, dispatch the
  tick's instance (key ``name@tick``) and move ``next_fire_at`` on, in one
  transaction. ``last_tick``/``last_instance_id``: what fired last.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fuseline_schedules",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("every", sa.Integer(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_tick", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_instance_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id", "version"],
            ["fuseline_workflows.workflow_id", "fuseline_workflows.version"],
            name=op.f("fk_fuseline_schedules_workflow_id_version_fuseline_workflows"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_fuseline_schedules")),
    )
    op.create_index("ix_fuseline_schedules_next_fire_at", "fuseline_schedules", ["next_fire_at"])


def downgrade() -> None:
    op.drop_index("ix_fuseline_schedules_next_fire_at", table_name="fuseline_schedules")
    op.drop_table("fuseline_schedules")
