"""Dispatch without foreign key checks: instances without a key to their
definition, steps without a key to their instance.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 17:00:00.000000

Each check looked the referenced row up and locked it (KEY SHARE) for every
row a dispatch inserted: a lock record in the WAL for the definition and one
for the instance, and a lookup per step. Processes dispatching one workflow at
once turned the definition's shared lock into a MultiXact per instance (7,800
for 8,000 instances dispatched by 4 processes), which PostgreSQL must store and
later freeze. The keys guarded nothing fuseline does: it creates an instance
only from a definition it stored and deletes no definition, inserts steps only
beside their instance (in its dispatch, or under its lock), and its retention
deletes an instance's steps itself before the instance. ``fuseline db verify``
reports what the keys would have refused if someone deletes rows by hand:
``instance_without_definition`` and ``orphaned_step``.

On SQLite the two tables are rebuilt (as every SQLite migration that changes a
constraint), so ``db upgrade --sql`` cannot print this one there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFINITION_KEY = "fk_fuseline_instances_workflow_id_version_fuseline_workflows"
INSTANCE_KEY = "fk_fuseline_steps_instance_id_fuseline_instances"


def upgrade() -> None:
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.drop_constraint(DEFINITION_KEY, type_="foreignkey")
    with op.batch_alter_table("fuseline_steps") as batch:
        batch.drop_constraint(INSTANCE_KEY, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("fuseline_steps") as batch:
        batch.create_foreign_key(
            INSTANCE_KEY, "fuseline_instances", ["instance_id"], ["id"], ondelete="CASCADE"
        )
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.create_foreign_key(
            DEFINITION_KEY, "fuseline_workflows", ["workflow_id", "version"], ["workflow_id", "version"]
        )
