"""Waiting out database outages: growing, jittered pauses between attempts.

A worker treats :class:`~fuseline.errors.DatabaseUnavailable` (connection
lost, server restarting, deadlock victim, a statement cancelled by a
timeout) as "try again later" and every other error as an answer. The
pauses grow so a long outage is not hammered, and are jittered so that the
many workers that lost their connections at the same moment (a server
restart, a failover) do not all come back at the same instant, again and
again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import DatabaseUnavailable, StatementCancelled

logger = logging.getLogger("fuseline.worker")
T = TypeVar("T")

#: Nominal waits between attempts while the database is unreachable: growing up to the last.
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
#: Each wait is its nominal value times a random factor in this range.
JITTER = (0.5, 1.5)


class GaveUp(Exception):
    """A call that may be abandoned was abandoned: the worker was asked to stop during an outage."""


def reconnect_delay(failures: int) -> float:
    """The pause after ``failures`` failed attempts in a row (0 after the first failure), jittered."""
    nominal = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
    return nominal * random.uniform(*JITTER)  # noqa: S311 - spreading retries out, not a secret


def call_retrying(what: str, call: Callable[[], T], *, stopping: threading.Event, stoppable: bool) -> T:
    """Call ``call`` until it answers, waiting out database outages with growing, jittered pauses.

    Only DatabaseUnavailable is retried; anything else, a read-only database
    included, is a real answer and propagates. A ``stoppable`` call raises
    :class:`GaveUp` when ``stopping`` is set during the outage (a claim is
    not worth waiting for then). Other calls (reports) never give up, since
    a result is not to be lost while the worker can still deliver it; they
    keep pausing between attempts even after a stop request, so a stopping
    worker does not hammer a database that is down.
    """
    failures = 0
    cancelled = False
    while True:
        try:
            result = call()
        except DatabaseUnavailable as exc:
            delay = reconnect_delay(failures)
            failures += 1
            cancelled = isinstance(exc, StatementCancelled)
            if cancelled:  # the database is up: name the timeout instead of "unavailable"
                logger.warning("%s: %s; retrying in %.3fs", what, exc, delay)
            else:
                logger.warning("database unavailable (%s failed: %s); retrying in %.3fs", what, exc, delay)
            if stoppable:
                if stopping.wait(delay):
                    raise GaveUp(what) from exc
            else:
                time.sleep(delay)
            continue
        if failures and cancelled:
            logger.info("%s went through after %d cancelled or failed attempts", what, failures)
        elif failures:
            logger.info("database reachable again after %d failed attempts", failures)
        return result
