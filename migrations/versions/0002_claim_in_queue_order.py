"""Claim in queue order: the queued-steps index orders by available_at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:33:04.460505

Ordering the claim by ``id`` let the planner walk the primary key instead of
the partial index when most rows were queued, then step past every finished
row on each claim. ``available_at`` is in no other index, so the partial
index is the only ordered path, and steps are claimed in the order they
became available.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("state = 'QUEUED'")


def upgrade() -> None:
    op.drop_index("ix_fuseline_steps_queued", table_name="fuseline_steps")
    op.create_index(
        "ix_fuseline_steps_queued",
        "fuseline_steps",
        ["workflow_id", "version", "available_at", "id"],
        unique=False,
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_fuseline_steps_queued", table_name="fuseline_steps")
    op.create_index(
        "ix_fuseline_steps_queued",
        "fuseline_steps",
        ["workflow_id", "version", "id"],
        unique=False,
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
