"""Claims recorded on the event that ends them: one history row fewer per step.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 19:00:00.000000

- ``fuseline_events.claimed_at``: when the attempt an event ends (succeeded,
  failed, skipped, released, lease expired, retry scheduled) was claimed.
  A claim no longer writes a ``claimed`` row of its own: while the step runs,
  its row says who holds it since when, and the event that ends the attempt
  keeps that claim. ``instance_events`` lists both lines as before.

A nullable column without a default: PostgreSQL adds it without rewriting the
table, so the upgrade is instant on a large history.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("fuseline_events", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fuseline_events") as batch:
        batch.drop_column("claimed_at")
