"""Waking idle workers when work is queued: LISTEN/NOTIFY on PostgreSQL, polling elsewhere.

Transactions that queue steps for other workers (a dispatch, a fan-out, a
lease that expired) send ``NOTIFY fuseline_work`` with an empty payload, so a
notification is a few bytes whatever the inputs. An idle worker waits on its
own listening connection and claims as soon as one arrives.

Notifications are only a hint: a worker still polls every ``poll_interval``,
so a lost notification, a dropped listening connection (re-established on
the next wait, at most once a second) costs latency, never work. Behind a
transaction pooler (PgBouncer in transaction mode, ``?pooler=transaction``
on the URL) a LISTEN would stay on a server connection the pooler lends to
others, so brokers there do not listen at all and idle workers poll.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine

CHANNEL = "fuseline_work"
_LISTEN = "LISTEN fuseline_work"
#: Seconds between attempts to re-establish a broken listening connection.
RECONNECT_SECONDS = 1.0

logger = logging.getLogger("fuseline.listener")


class WorkListener:
    """One LISTEN connection, taken from the engine's pool and discarded when done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._fairy: Any = None
        self._retry_at = 0.0

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if work was announced meanwhile."""
        connection = self._connection()
        if connection is None:
            time.sleep(timeout)
            return False
        try:
            for _ in connection.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except Exception as exc:  # the server restarted or the connection was killed
            logger.warning("listening connection lost (%s); polling until it is back", exc)
            self.close()
            return False

    def _connection(self) -> Any:
        if self._fairy is not None:
            return self._fairy.driver_connection
        now = time.monotonic()
        if now < self._retry_at:
            return None
        try:
            fairy = self._engine.raw_connection()
            try:
                connection = fairy.driver_connection
                connection.rollback()
                connection.autocommit = True
                connection.execute(_LISTEN)
            except BaseException:
                fairy.invalidate()
                raise
        except Exception as exc:
            self._retry_at = now + RECONNECT_SECONDS
            logger.debug("cannot listen for work yet: %s", exc)
            return None
        self._fairy = fairy
        return fairy.driver_connection

    def close(self) -> None:
        """Discard the connection (it must not go back to the pool in LISTEN, autocommit mode)."""
        fairy, self._fairy = self._fairy, None
        if fairy is not None:
            try:
                fairy.invalidate()
            except Exception as exc:  # already broken: nothing left to release
                logger.debug("discarding the listening connection: %s", exc)
        self._retry_at = time.monotonic() + RECONNECT_SECONDS
