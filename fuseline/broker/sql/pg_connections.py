"""The PostgreSQL connections one broker holds: a fixed budget, opened together or not at all.

Every statement a broker sends (the one-statement claims and reports, the
general path's transactions, heartbeats) runs on one of ``size``
connections, lent to one thread at a time. Idle workers wait on one more,
their LISTEN connection (:mod:`.listener`). So a worker process never needs
more connections than it started with, and a busy database cannot leave it
half-connected: when ``max_connections`` runs out, a process that cannot
open its whole budget closes what it opened and reports the database
unavailable, and the worker backs off (with jitter) and tries again. Without
that, every process held some connections while waiting for one more, and
nothing ran (a livelock).

A connection that breaks (server restart, failover, a killed backend)
drops the whole budget; the next statement opens a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger("fuseline.broker")

#: Connections a broker holds besides its LISTEN connection: one for the worker loop, one
#: more so heartbeats and the report flusher need not wait behind it.
DEFAULT_CONNECTIONS = 2
#: Longest wait for a lent connection to come back before reporting the database unavailable.
LEND_TIMEOUT_SECONDS = 30.0


class BudgetExhausted(Exception):
    """No connection came back in time: every one is busy (reported as DatabaseUnavailable)."""


class ConnectionBudget:
    """``size`` kept connections of ``engine``, each a SQLAlchemy Connection.

    Connections are kept in autocommit mode, so a one-statement operation is
    its own transaction; :meth:`transaction` turns autocommit off for the
    duration of a general-path transaction. A thread never borrows twice at
    once (that could deadlock a small budget), which :meth:`lend` checks.
    """

    def __init__(self, engine: Engine, size: int = DEFAULT_CONNECTIONS) -> None:
        if size < 1:
            raise ValueError(f"a broker needs at least one connection, not {size}")
        self.size = size
        self._engine = engine
        self._available = threading.Condition()
        self._idle: list[Connection] = []
        self._open = False
        #: Bumped whenever the budget is dropped; connections of an older generation are closed
        #: when they come back instead of being lent again.
        self._generation = 0
        self._lent: dict[int, int] = {}  # id(connection) -> its generation
        self._borrowing = threading.local()

    @contextmanager
    def lend(self) -> Iterator[Connection]:
        """A connection for this thread alone, until the block ends."""
        connection = self.take()
        try:
            yield connection
        finally:
            self.give_back(connection)

    def take(self) -> Connection:
        """A connection for this thread alone until :meth:`give_back` (the hot path's form of
        :meth:`lend`)."""
        if getattr(self._borrowing, "active", False):
            raise RuntimeError("a thread may hold one broker connection at a time (nested use)")
        connection = self._take()
        self._borrowing.active = True
        return connection

    def give_back(self, connection: Connection) -> None:
        self._borrowing.active = False
        self._give_back(connection)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A lent connection inside one transaction, committed when the block ends."""
        with self.lend() as connection:
            raw = connection.connection.driver_connection
            raw.autocommit = False
            try:
                with connection.begin():
                    yield connection
            finally:
                if not raw.closed and not raw.broken:
                    raw.autocommit = True

    def _take(self) -> Connection:
        with self._available:
            if not self._open:
                self._open_all()
            if not self._idle and not self._available.wait_for(lambda: self._idle, LEND_TIMEOUT_SECONDS):
                raise BudgetExhausted(f"all {self.size} connections of this broker stayed busy")
            connection = self._idle.pop()
            self._lent[id(connection)] = self._generation
            return connection

    def _give_back(self, connection: Connection) -> None:
        raw = connection.connection.driver_connection if not connection.invalidated else None
        broken = raw is None or raw.closed or raw.broken
        with self._available:
            generation = self._lent.pop(id(connection), None)
            if broken and generation == self._generation:
                self._drop_all()
            if broken or generation != self._generation:
                _discard(connection)
                return
            self._idle.append(connection)
            self._available.notify()

    def _open_all(self) -> None:
        """Open ``size`` connections, or none: what was opened is closed if one fails."""
        opened: list[Connection] = []
        try:
            for _ in range(self.size):
                connection = self._engine.connect()
                opened.append(connection)
                connection.rollback()
                connection.connection.driver_connection.autocommit = True
        except BaseException:
            for connection in opened:
                _discard(connection)
            raise
        self._idle = opened
        self._open = True

    def _drop_all(self) -> None:
        """Close the idle connections now and the lent ones when they come back."""
        self._generation += 1
        self._open = False
        idle, self._idle = self._idle, []
        for connection in idle:
            _discard(connection)

    def close(self) -> None:
        with self._available:
            self._drop_all()


def _discard(connection: Connection) -> None:
    """Close a kept connection for good (it is in autocommit mode: not for the pool)."""
    try:
        if not connection.invalidated:
            connection.invalidate()
        connection.close()
    except (SQLAlchemyError, psycopg.Error, OSError) as exc:  # already broken: nothing to release
        logger.debug("discarding a connection: %s", _first_line(exc))


def _first_line(exc: Any) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
