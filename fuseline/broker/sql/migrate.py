"""Schema migrations: alembic, configured in code, with the scripts shipped in the package.

The wheel carries the repository's ``migrations/`` as ``fuseline/_migrations``
so ``fuseline db upgrade`` works after a plain ``pip install``; an editable
install reads the repository folder directly.

Checking whether a database is current does not import alembic: the
revision ids are listed here (a test keeps them equal to the scripts), and
the version is one row in ``fuseline_alembic_version``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from ...errors import DatabaseError, SchemaOutOfDate
from .models import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

#: Every revision, oldest first. The last one is what this code expects.
REVISIONS: tuple[str, ...] = (
    *("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010"),
    "0011",
)
HEAD_REVISION = REVISIONS[-1]

#: Serialises concurrent upgrades on PostgreSQL (any constant unique to fuseline).
_UPGRADE_LOCK_KEY = 0x66757365  # "fuse"

#: How long a migration waits for a table lock (held by a long query, say) before it gives up,
#: whatever ``lock_timeout`` the role has. The statements queued behind its lock wait as long,
#: workers' claims and reports among them; fuseline's own transactions take milliseconds (and
#: the server ends one left idle after 5 s), so waiting longer would only stall them.
MIGRATION_LOCK_TIMEOUT = "10s"
#: A migration's own settings, for its transaction only (PostgreSQL). No statement timeout: a
#: migration may rewrite a big table, and one stopped halfway is rolled back whole, so the
#: role's ``statement_timeout`` would only make ``db upgrade`` impossible. No lock timeout while
#: waiting for the upgrade lock: concurrent upgrades wait their turn, as they always did.
_NO_TIMEOUTS = (text("SET LOCAL statement_timeout = 0"), text("SET LOCAL lock_timeout = 0"))
_TABLE_LOCK_TIMEOUT = text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'")

UPGRADE_HINT = "run `fuseline db upgrade`"


def migrations_path() -> Path:
    """The folder holding ``env.py`` and ``versions/``."""
    package = Path(__file__).resolve().parents[2]
    shipped = package / "_migrations"
    if (shipped / "env.py").exists():
        return shipped
    repository = package.parent / "migrations"
    if (repository / "env.py").exists():
        return repository
    raise DatabaseError(f"fuseline's migration scripts are missing (looked in {shipped} and {repository})")


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The database's revision, or None when fuseline's tables were never created."""
    has_table = connection.dialect.has_table(connection, VERSION_TABLE)
    if not has_table:
        return None
    row = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()  # noqa: S608 - constant name
    return row[0] if row else None


def check_current(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is exactly at the head revision."""
    with engine.connect() as connection:
        revision = current_revision(connection)
    if revision == HEAD_REVISION:
        return
    if revision is None:
        raise SchemaOutOfDate(f"the database has no fuseline tables: {UPGRADE_HINT}")
    if revision in REVISIONS:
        raise SchemaOutOfDate(
            f"the database is at revision {revision}, behind this fuseline ({HEAD_REVISION}): {UPGRADE_HINT}"
        )
    raise SchemaOutOfDate(
        f"the database is at revision {revision}, which this fuseline does not know "
        f"(its newest is {HEAD_REVISION}); upgrade fuseline, or {UPGRADE_HINT} with a newer version"
    )


def missing_revisions(revision: str | None) -> tuple[str, ...] | None:
    """The revisions a database at ``revision`` (None: no tables) lacks, oldest first; None when
    this fuseline does not know ``revision`` (a newer one wrote it)."""
    if revision is None:
        return REVISIONS
    if revision not in REVISIONS:
        return None
    return REVISIONS[REVISIONS.index(revision) + 1 :]


def upgrade_sql(dialect_name: str, start: str | None, revision: str = "head") -> str:
    """The SQL that upgrades a database of ``dialect_name`` from ``start`` (None: empty) to
    ``revision``, written by alembic's offline mode: no database is used."""
    import io

    from alembic import command
    from alembic.util.exc import CommandError

    buffer = io.StringIO()
    config = alembic_config()
    config.output_buffer = buffer
    config.attributes["dialect_name"] = dialect_name
    try:
        command.upgrade(config, f"{start}:{revision}" if start else revision, sql=True)
    except CommandError as exc:
        if dialect_name == "sqlite" and "batch mode" in str(exc):
            raise DatabaseError(
                "cannot print the SQL of this upgrade for SQLite: it rebuilds a table, which needs "
                "the database itself; run `fuseline db upgrade` instead"
            ) from None
        raise DatabaseError(f"cannot write the SQL of an upgrade to {revision!r}: {exc}") from None
    return buffer.getvalue()


def ensure_current(engine: Engine) -> None:
    """Upgrade to head unless already there (without importing alembic when it is)."""
    with engine.connect() as connection:
        if current_revision(connection) == HEAD_REVISION:
            return
    upgrade(engine)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate up to ``revision`` in one transaction; concurrent callers wait their turn.

    On PostgreSQL the transaction sets its own timeouts, so the role's do not apply: no
    ``statement_timeout``, and ``lock_timeout`` of :data:`MIGRATION_LOCK_TIMEOUT` for table locks
    once it holds the upgrade lock (none while it waits for that lock). What runs before that
    transaction (the driver's first queries on a new connection, reading the revision) is
    subject to the role's timeouts: a few milliseconds are enough for them, but with a role
    ``statement_timeout`` of 1 ms about one ``db upgrade`` in ten fails there, before changing
    anything.
    """
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate down to ``revision`` (``base`` drops every fuseline table)."""
    _run(engine, "downgrade", revision)


def _run(engine: Engine, direction: str, revision: str) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                for setting in _NO_TIMEOUTS:  # before the lock: its wait is a statement too
                    connection.execute(setting)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK_KEY})
                connection.execute(_TABLE_LOCK_TIMEOUT)
            getattr(command, direction)(alembic_config(connection), revision)
    except CommandError as exc:
        raise DatabaseError(f"cannot {direction} to {revision!r}: {exc}") from None
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":
            raise DatabaseError(
                f"{direction} waited more than {MIGRATION_LOCK_TIMEOUT} for a lock on one of fuseline's "
                f"tables, held by another session (see pg_locks), and changed nothing: run it again "
                f"when that session is done ({exc.orig})"
            ) from None
        raise DatabaseError(f"{direction} failed: {exc.orig}") from None


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revision: str | None
    description: str
    is_head: bool


def history() -> list[RevisionInfo]:
    """The migration scripts, newest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    heads = set(scripts.get_heads())
    return [
        RevisionInfo(
            revision=s.revision,
            down_revision=s.down_revision if isinstance(s.down_revision, str) else None,
            description=(s.doc or "").strip(),
            is_head=s.revision in heads,
        )
        for s in scripts.walk_revisions()
    ]
