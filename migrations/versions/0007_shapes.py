"""Shapes: Map items, SubWorkflow children and signals for WaitFor.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:00:00.000000

- steps: a partial index over the Map items not final yet (is an item the last?); a Map
  item's ``item`` (its value, JSON), ``item_of`` (its Map step) and
  ``item_index``; a Map step's ``item_count`` (how many items it fanned out); a
  SubWorkflow step's ``child_instance_id``.
- instances: ``parent_instance_id`` and ``parent_step`` of a child instance,
  indexed over the children only (cancelling a parent finds its children).
- ``fuseline_signals``: signals an instance received, one per name (the primary
  key refuses a second), deleted with their instance.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHILDREN = sa.text("parent_instance_id IS NOT NULL")
#: The Map items not final yet: "is this item the last one" is a look into this index.
OPEN_ITEMS = sa.text("item_of IS NOT NULL AND state IN ('PENDING', 'QUEUED', 'RUNNING')")


def upgrade() -> None:
    with op.batch_alter_table("fuseline_steps") as batch:
        batch.add_column(sa.Column("item", sa.Text(), nullable=True))
        batch.add_column(sa.Column("item_of", sa.String(200), nullable=True))
        batch.add_column(sa.Column("item_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("item_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("child_instance_id", sa.Uuid(as_uuid=False), nullable=True))
    op.create_index(
        "ix_fuseline_steps_open_items",
        "fuseline_steps",
        ["instance_id", "item_of"],
        postgresql_where=OPEN_ITEMS,
        sqlite_where=OPEN_ITEMS,
    )
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.add_column(sa.Column("parent_instance_id", sa.Uuid(as_uuid=False), nullable=True))
        batch.add_column(sa.Column("parent_step", sa.String(200), nullable=True))
    op.create_index(
        "ix_fuseline_instances_parent_instance_id",
        "fuseline_instances",
        ["parent_instance_id"],
        postgresql_where=CHILDREN,
        sqlite_where=CHILDREN,
    )
    op.create_table(
        "fuseline_signals",
        sa.Column("instance_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["fuseline_instances.id"],
            name="fk_fuseline_signals_instance_id_fuseline_instances",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", "name", name="pk_fuseline_signals"),
    )


def downgrade() -> None:
    op.drop_table("fuseline_signals")
    op.drop_index("ix_fuseline_instances_parent_instance_id", table_name="fuseline_instances")
    op.drop_index("ix_fuseline_steps_open_items", table_name="fuseline_steps")
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.drop_column("parent_step")
        batch.drop_column("parent_instance_id")
    with op.batch_alter_table("fuseline_steps") as batch:
        for column in ("child_instance_id", "item_count", "item_index", "item_of", "item"):
            batch.drop_column(column)
