"""alembic environment for fuseline's tables.

fuseline runs migrations through ``fuseline db upgrade`` (or
``SqlBroker(..., migrate=True)``), which hands this script an open
connection. Developers can also use the ``alembic`` command from the
repository root; the database is then ``FUSELINE_DATABASE_URL`` or
``-x url=...``.
"""

from __future__ import annotations

import os

from alembic import context

from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.models import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to):
    """Only fuseline's tables: the database may hold the application's own."""
    if type_ == "table":
        return bool(name) and name.startswith("fuseline_") and name != VERSION_TABLE
    return True


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("FUSELINE_DATABASE_URL")
    if not url:
        raise SystemExit("set FUSELINE_DATABASE_URL or pass -x url=... to run alembic directly")
    return url


def run_migrations_offline() -> None:
    # ``fuseline db upgrade --sql`` names the dialect; the alembic command needs a URL.
    dialect_name = config.attributes.get("dialect_name")
    target = {"dialect_name": dialect_name} if dialect_name else {"url": _url()}
    _configure(**target, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_database_engine(_url())
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
