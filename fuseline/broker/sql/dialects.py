"""Where PostgreSQL and SQLite differ, in one place.

- **Clock.** Leases, availability and timestamps use the database clock so
  workers with skewed clocks agree. PostgreSQL: ``clock_timestamp()`` (read
  after any lock is taken, so it orders reports correctly). SQLite lives on
  one machine, whose clock is the database clock; its own ``'now'`` has only
  millisecond resolution, too coarse to order two reports, so each
  connection gets SQL functions ``fuseline_now()`` and
  ``fuseline_now_plus(seconds)`` (see ``engine.configure_sqlite``) that read
  that clock to the microsecond. Times are stored as text in
  ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC, the format SQLAlchemy uses, so text
  comparison is time comparison.
- **Claims.** PostgreSQL claims with ``FOR UPDATE SKIP LOCKED`` so workers
  never wait on each other. SQLite has no row locks: every write
  transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time, the
  others wait on ``busy_timeout``), which makes claims exclusive too.
- **Insert-or-ignore** for registering a workflow definition once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True)
class Dialect:
    name: str

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    @property
    def skip_locked(self) -> bool:
        """Whether claims lock rows with SKIP LOCKED (else the database serialises writers)."""
        return self.is_postgresql

    def now(self) -> ColumnElement[Any]:
        """The database's current time."""
        if self.is_postgresql:
            return func.clock_timestamp()
        return func.fuseline_now()

    def now_plus(self, seconds: Any) -> ColumnElement[Any]:
        """The database's current time plus ``seconds`` (a number or bound parameter)."""
        if self.is_postgresql:
            return func.clock_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        return func.fuseline_now_plus(seconds)

    def insert_ignoring_conflicts(self, table: Table) -> Insert:
        """INSERT that does nothing when the primary key already exists."""
        if self.is_postgresql:
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()


def dialect_of(name: str) -> Dialect:
    if name not in ("postgresql", "sqlite"):
        raise ValueError(f"fuseline supports PostgreSQL and SQLite, not {name!r}")
    return Dialect(name)
