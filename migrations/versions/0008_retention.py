"""Retention: finished instances found oldest first without reading the recent ones.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-16 09:00:00.000000

- ``ix_fuseline_instances_finished_at``: the finished instances by ``finished_at``
  (only those: a RUNNING instance has none, so dispatch pays no write for it).
  Running workers delete instances finished longer ago than the retention,
  oldest first, through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINISHED = sa.text("finished_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_fuseline_instances_finished_at",
        "fuseline_instances",
        ["finished_at"],
        postgresql_where=FINISHED,
        sqlite_where=FINISHED,
    )


def downgrade() -> None:
    op.drop_index("ix_fuseline_instances_finished_at", table_name="fuseline_instances")
