"""Statements on API tokens (``fuseline_tokens``) and the servers' shared secrets
(``fuseline_server_secrets``).

Both inserts do nothing on a conflict instead of failing, so the caller learns from the
missing RETURNING row that a name (or, once in 2**48 tokens, an id) is taken, and two
servers creating the session secret at once both end up reading the one that won.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Insert, Select, Update, bindparam, select, update

from ..dialects import Dialect, dialect_of
from ..models import server_secrets, tokens


class TokenQueries:
    def __init__(self, dialect: Dialect) -> None:
        named = tokens.c.name == bindparam("p_name")
        #: The columns users see (never the salt or the hash).
        shown = (tokens.c.name, tokens.c.role, tokens.c.created_at, tokens.c.revoked_at)
        #: Store a new token, stamped by the database clock; no row back when its name or id is taken.
        self.token_insert: Insert = (
            dialect.insert_ignoring_conflicts(tokens).values(created_at=dialect.now()).returning(*shown)
        )
        self.token_by_name: Select = select(*shown).where(named)
        self.tokens_all: Select = select(*shown).order_by(tokens.c.name)
        self.token_names: Select = select(tokens.c.name)
        #: Revoke a live token; no row back when there is none (unknown, or revoked already).
        self.token_revoke: Update = (
            update(tokens)
            .where(named, tokens.c.revoked_at.is_(None))
            .values(revoked_at=dialect.now())
            .returning(*shown)
        )
        #: What verifying needs of every live token: one small read per refresh.
        self.tokens_live: Select = select(
            tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.salt, tokens.c.hash
        ).where(tokens.c.revoked_at.is_(None))
        #: Store a secret unless one exists under this name (the first writer wins).
        self.secret_insert: Insert = dialect.insert_ignoring_conflicts(server_secrets).values(
            created_at=dialect.now()
        )
        self.secret_get: Select = select(server_secrets.c.secret).where(
            server_secrets.c.name == bindparam("p_name")
        )


@cache
def for_dialect(name: str) -> TokenQueries:
    return TokenQueries(dialect_of(name))
