"""Instances without a foreign key to their workflow definition.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 17:00:00.000000

The check of that key looked the definition's row up and locked it (KEY SHARE)
at every dispatch: a lock record in the WAL each time, and when several
processes dispatched instances of one workflow at once, the shared lock became
a MultiXact per instance (7,800 for 8,000 instances dispatched by 4 processes),
which PostgreSQL must store and later freeze. fuseline creates an instance only
from a definition it stored, and deletes none, so the check guarded nothing
fuseline does; ``fuseline db verify`` reports an instance whose definition is
missing (``instance_without_definition``).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_fuseline_instances_workflow_id_version_fuseline_workflows"


def upgrade() -> None:
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("fuseline_instances") as batch:
        batch.create_foreign_key(
            FOREIGN_KEY, "fuseline_workflows", ["workflow_id", "version"], ["workflow_id", "version"]
        )
