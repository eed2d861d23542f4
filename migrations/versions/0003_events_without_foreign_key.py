"""History rows without a foreign key to their instance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:20:00.000000

Every claim and report appends events, and the foreign key made each of
those rows look its instance up and lock it (KEY SHARE): about a fifth of
the database time of a batched drain. Events are only ever written by
fuseline, together with the instance change they describe, so the check
guarded nothing. Whatever deletes instances must delete their events with them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_fuseline_events_instance_id_fuseline_instances"


def upgrade() -> None:
    with op.batch_alter_table("fuseline_events") as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("fuseline_events") as batch:
        batch.create_foreign_key(
            FOREIGN_KEY, "fuseline_instances", ["instance_id"], ["id"], ondelete="CASCADE"
        )
