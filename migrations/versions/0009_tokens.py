"""Tokens: the API tokens of ``fuseline server`` and the secret its dashboard signs with.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-18 09:00:00.000000

- ``fuseline_tokens``: one row per token ever created. ``id`` is the token's
  public part (the row is found without scanning), ``name`` is unique and never
  reused (not even after a revoke, so a name in a log means one token), ``role``
  is worker, viewer or operator. Only a salted scrypt hash of the token is kept
  (``salt``, ``hash``, both hex), never the token. ``revoked_at`` is set once.
- ``fuseline_server_secrets``: random secrets every server process on the
  database shares, by purpose (``session``: what the dashboard signs its
  cookies with), created once by the first server that needs one.

Retention deletes neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fuseline_tokens",
        sa.Column("id", sa.String(12), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fuseline_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_fuseline_tokens_name")),
    )
    op.create_table(
        "fuseline_server_secrets",
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_fuseline_server_secrets")),
    )


def downgrade() -> None:
    op.drop_table("fuseline_server_secrets")
    op.drop_table("fuseline_tokens")
