"""Talking to the database: transactions, one-statement operations, wake-ups, error translation.

The dialect is chosen once, here: :class:`PostgresDatabase` runs everything
on a fixed budget of kept connections (:mod:`.pg_connections`) and can run
the one-statement forms of :mod:`.pg_statements`; :class:`SqliteDatabase`
runs transactions on the engine's pool, each started with ``BEGIN
IMMEDIATE`` (see :func:`.engine.configure_sqlite`). Every driver error
leaves this module as a :class:`~fuseline.errors.DatabaseError` (or
``DatabaseUnavailable`` when retrying may help) with no password in it;
anything else (a bug) passes through unchanged.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ...errors import DatabaseError, DatabaseUnavailable
from .engine import behind_transaction_pooler, database_error, mask_url
from .listener import WorkListener
from .pg_connections import BudgetExhausted, ConnectionBudget
from .queries import events as event_queries

logger = logging.getLogger(__name__)

#: How often an idle worker on SQLite looks for work.
SQLITE_POLL_SECONDS = 0.1

Rows = list[tuple[Any, ...]]


class Database(ABC):
    """One database, as the broker's jobs use it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = mask_url(engine.url)
        self.dialect_name: str = engine.dialect.name
        self._announce = event_queries.for_dialect(self.dialect_name).work_announce

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction on a Connection, committed when the block ends."""
        try:
            with self._begin() as connection:
                yield connection
        except DBAPIError as exc:
            raise self.translate(exc) from None
        except BudgetExhausted as exc:
            raise DatabaseUnavailable(f"database busy on {self.url}: {exc}") from None

    @abstractmethod
    def _begin(self) -> AbstractContextManager[Connection]:
        """Where a transaction runs: a Connection inside ``begin()``."""

    def announce_work(self, conn: Connection) -> None:
        """Wake idle workers when this transaction commits (PostgreSQL's NOTIFY; a no-op elsewhere)."""
        if self._announce is not None:
            conn.execute(self._announce)

    @abstractmethod
    def wait_for_work(self, timeout: float) -> bool:
        """Wait until work may have been queued (True) or ``timeout`` passes."""

    def translate(self, exc: DBAPIError | psycopg.Error, where: str = "database error") -> DatabaseError:
        """The fuseline error for a driver error (DatabaseUnavailable if retrying may help)."""
        if isinstance(exc, DBAPIError):
            return database_error(
                exc.orig,
                f"{where} on {self.url}",
                self.engine.url,
                connection_invalidated=exc.connection_invalidated,
            )
        return database_error(exc, f"{where} on {self.url}", self.engine.url)

    def close(self) -> None:
        """Release every connection."""


class SqliteDatabase(Database):
    """SQLite: a transaction per operation on the engine's pool; idle workers poll often."""

    def _begin(self) -> AbstractContextManager[Connection]:
        return self.engine.begin()

    def wait_for_work(self, timeout: float) -> bool:
        # A claim on a local file is cheap: poll often instead of waiting out the interval.
        time.sleep(min(timeout, SQLITE_POLL_SECONDS))
        return True


class PostgresDatabase(Database):
    """PostgreSQL: a fixed budget of kept connections, one-statement operations, LISTEN/NOTIFY."""

    def __init__(self, engine: Engine, *, connections: int, listen: bool) -> None:
        super().__init__(engine)
        self.budget = ConnectionBudget(engine, connections)
        # A transaction pooler would hand LISTEN to a server connection it then lends to others.
        listen = listen and not behind_transaction_pooler(engine)
        self.listener = WorkListener(engine) if listen else None

    def _begin(self) -> AbstractContextManager[Connection]:
        return self.budget.transaction()

    def rows(self, sql: str, params: dict[str, Any]) -> Rows:
        """Run one statement in autocommit mode (its own transaction); its rows."""
        return self._on_a_connection(lambda raw: raw.execute(sql, params).fetchall())

    def together(self, statements: Sequence[tuple[str, dict[str, Any]]]) -> list[Rows]:
        """Run statements in one transaction and one round trip (a pipeline); the rows of each.

        A later statement sees what an earlier one wrote. If one fails, none
        of them took effect. No BEGIN and COMMIT are sent: on an autocommit
        connection the extended protocol keeps every statement before the
        pipeline's Sync in one implicit transaction, committed (or rolled back
        after an error) by that Sync: two statements fewer for every report
        the driver and the server handle on the hot path.
        """

        def run(raw: psycopg.Connection) -> list[Rows]:
            try:
                with raw.pipeline():
                    cursors = [raw.execute(sql, params) for sql, params in statements]
                return [cursor.fetchall() for cursor in cursors]
            except psycopg.Error:
                if not raw.closed and not raw.broken:
                    raw.rollback()  # the failed transaction block, if the server still has it
                raise

        return self._on_a_connection(run)

    def _on_a_connection(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        """``work`` on one of the budget's connections; once more, on fresh connections, if
        the server lacks a statement psycopg prepared on that one. Such a statement fails at
        its start, so nothing took effect and it can run again, and a new connection
        prepares afresh (a worker stopped on this right after a full disk). Behind an
        undeclared transaction pooler the error comes back, and the second one is raised
        with what to do."""
        try:
            try:
                return self._lent(work)
            except psycopg.errors.InvalidSqlStatementName as exc:
                logger.warning("%s on %s; running it again on new connections", exc, self.url)
                return self._lent(work)
        except psycopg.Error as exc:
            raise self.translate(exc) from None
        except BudgetExhausted as exc:
            raise DatabaseUnavailable(f"database busy on {self.url}: {exc}") from None
        except DBAPIError as exc:  # opening the budget
            raise self.translate(exc) from None

    def _lent(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        connection = self.budget.take()
        raw = connection.connection.driver_connection
        try:
            return work(raw)
        except psycopg.errors.InvalidSqlStatementName:
            raw.close()  # psycopg's prepared statements and the server's differ: the budget reopens
            raise
        finally:
            self.budget.give_back(connection)

    def wait_for_work(self, timeout: float) -> bool:
        if self.listener is None:
            time.sleep(timeout)
            return False
        return self.listener.wait(timeout)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        self.budget.close()
