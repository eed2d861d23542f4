"""Time and flow control: keys, priorities, queues, durable retries, pauses and limits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:00:00.000000

- instances: ``key`` (at most one instance per workflow and key, by a unique
  index over the keyed instances), ``priority``, ``started_at`` (its first claim: from then on it is
  "in progress" for a workflow ConcurrencyLimit), and that limit's
  ``concurrency_max`` and ``limit_key`` (the value of its key input).
- steps: ``urgency`` (minus the priority: the queued-steps index orders by it,
  ascending, then by ``available_at``), ``queue``, ``retries`` (RetryPolicy
  retries scheduled by the broker), ``lost`` (leases that ran out: the
  lost-worker budget, apart from retries and released claims), ``gated``
  (a limit applies to it), and its limits' ``concurrency_max``, ``rate_n``,
  ``rate_per`` and ``limit_key``.
- ``fuseline_starts``: when steps under a RateLimit were claimed (the sliding window);
  indexed by time too, so that the reaper prunes rows older than any window.
- workers: ``queues`` they claim from (JSON; NULL: every queue of their workflows).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("state = 'QUEUED'")
RUNNING = sa.text("state = 'RUNNING'")
IN_PROGRESS = sa.text("status = 'RUNNING' AND started_at IS NOT NULL")
#: Only keyed instances and limited steps enter these indexes: the others would pay an index
#: entry at every state change for nothing (NULL keys never collide; unlimited steps are not counted).
KEYED = sa.text("key IS NOT NULL")
RUNNING_LIMITED = sa.text("state = 'RUNNING' AND concurrency_max IS NOT NULL")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.add_column(sa.Column("key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("concurrency_max", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("limit_key", sa.Text(), nullable=True))
    op.create_index(
        "ix_fuseline_instances_workflow_id_key",
        "fuseline_instances",
        ["workflow_id", "key"],
        unique=True,
        postgresql_where=KEYED,
        sqlite_where=KEYED,
    )
    op.create_index(
        "ix_fuseline_instances_workflow_id_limit_key",
        "fuseline_instances",
        ["workflow_id", "limit_key"],
        postgresql_where=IN_PROGRESS,
        sqlite_where=IN_PROGRESS,
    )
    with op.batch_alter_table("fuseline_steps") as batch:
        batch.add_column(sa.Column("urgency", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("queue", sa.String(100), server_default="default", nullable=False))
        batch.add_column(sa.Column("retries", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("lost", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("gated", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("concurrency_max", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_n", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("rate_per", sa.Float(), nullable=True))
        batch.add_column(sa.Column("limit_key", sa.Text(), nullable=True))
    op.drop_index("ix_fuseline_steps_queued", table_name="fuseline_steps")
    op.create_index(
        "ix_fuseline_steps_queued",
        "fuseline_steps",
        ["workflow_id", "version", "queue", "urgency", "available_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index(
        "ix_fuseline_steps_running_limit",
        "fuseline_steps",
        ["workflow_id", "name", "limit_key"],
        postgresql_where=RUNNING_LIMITED,
        sqlite_where=RUNNING_LIMITED,
    )
    op.create_table(
        "fuseline_starts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("workflow_id", sa.String(200), nullable=False),
        sa.Column("step_name", sa.String(200), nullable=False),
        sa.Column("limit_key", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fuseline_starts"),
    )
    op.create_index(
        "ix_fuseline_starts_workflow_id_step_name_limit_key_at",
        "fuseline_starts",
        ["workflow_id", "step_name", "limit_key", "at"],
    )
    op.create_index("ix_fuseline_starts_at", "fuseline_starts", ["at"])
    with op.batch_alter_table("fuseline_workers") as batch:
        batch.add_column(sa.Column("queues", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fuseline_workers") as batch:
        batch.drop_column("queues")
    op.drop_index("ix_fuseline_starts_at", table_name="fuseline_starts")
    op.drop_index("ix_fuseline_starts_workflow_id_step_name_limit_key_at", table_name="fuseline_starts")
    op.drop_table("fuseline_starts")
    op.drop_index("ix_fuseline_steps_running_limit", table_name="fuseline_steps")
    op.drop_index("ix_fuseline_steps_queued", table_name="fuseline_steps")
    op.create_index(
        "ix_fuseline_steps_queued",
        "fuseline_steps",
        ["workflow_id", "version", "available_at", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    with op.batch_alter_table("fuseline_steps") as batch:
        for column in ("limit_key", "rate_per", "rate_n", "concurrency_max", "gated", "lost", "retries"):
            batch.drop_column(column)
        batch.drop_column("queue")
        batch.drop_column("urgency")
    op.drop_index("ix_fuseline_instances_workflow_id_limit_key", table_name="fuseline_instances")
    op.drop_index("ix_fuseline_instances_workflow_id_key", table_name="fuseline_instances")
    with op.batch_alter_table("fuseline_instances") as batch:
        for column in ("limit_key", "concurrency_max", "started_at", "priority", "key"):
            batch.drop_column(column)
