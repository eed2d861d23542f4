"""Count the claims a worker gave back unstarted, instead of raising the attempt limit.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:30:00.000000

A step a stopping worker gives back (or a prefetched step it will not run)
costs no attempt. That refund used to be recorded by raising the step's
``max_attempts``, so ``instances show`` printed "attempt 2/4" after one
release where "1/3" was meant. ``released`` counts those claims instead:
executions are ``attempt - released``, the limit stays what the workflow
says, and ``attempt`` itself still only grows (reports are fenced by it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fuseline_steps") as batch:
        batch.add_column(sa.Column("released", sa.Integer(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("fuseline_steps") as batch:
        batch.drop_column("released")
