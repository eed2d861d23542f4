"""``QueueCollector``: the queues and the live workers, as a scrape sees them.

The numbers are the database's, not this process's: every process that
serves them shows the same values (aggregate with ``max`` across workers).
They are read by one statement (:func:`fuseline.broker.sql.backlog.read_backlog`)
at most once per ``cache_seconds``, however many scrapers ask, on one
connection of the collector's own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from ..broker.sql.backlog import Backlog, read_backlog
from ..broker.sql.engine import create_database_engine, parse_url

logger = logging.getLogger("fuseline.metrics")

#: How long one read serves scrapes: below any usual scrape interval (15 s or more).
DEFAULT_CACHE_SECONDS = 5.0


class QueueCollector(Collector):
    """``fuseline_queue_depth``, ``fuseline_queue_oldest_age_seconds`` and ``fuseline_workers_alive``.

    ``url_or_engine``: a database URL (the collector then opens an engine
    of one connection, on first scrape, and :meth:`close` disposes of it)
    or an Engine to borrow, such as ``broker.engine``. A worker is alive
    when heard from within ``dead_after`` seconds (the broker's rule: two
    leases). ``queues`` lists ``(workflow, queue)`` pairs always shown, at 0
    when empty; a pair seen once is shown from then on too, so an emptied
    queue reads 0 instead of vanishing. When the database cannot be read,
    the three are left out of that scrape (a warning is logged once per
    outage) rather than shown stale.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        dead_after: float,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        queues: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._url = None if isinstance(url_or_engine, Engine) else url_or_engine
        self._engine = url_or_engine if isinstance(url_or_engine, Engine) else None
        self.dead_after = dead_after
        self.cache_seconds = cache_seconds
        self._known: set[tuple[str, str]] = set(queues)
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._backlog: Backlog | None = None
        self._failing = False
        #: How many times the database was read (for tests of the cache).
        self.reads = 0

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering the collector reads nothing."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        backlog = self.backlog()
        if backlog is None:
            return
        depth, age, alive = self._families()
        seen = set()
        for row in backlog.queues:
            key = (row.workflow_id, row.queue)
            seen.add(key)
            depth.add_metric(key, row.depth)
            age.add_metric(key, row.oldest_age_seconds)
        with self._lock:
            self._known |= seen
            empty = sorted(self._known - seen)
        for key in empty:
            depth.add_metric(key, 0)
            age.add_metric(key, 0)
        alive.add_metric([], backlog.workers_alive)
        yield from (depth, age, alive)

    def backlog(self) -> Backlog | None:
        """The last read if younger than ``cache_seconds``, else a new one (None: unreadable)."""
        with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self.cache_seconds:
                return self._backlog
            self._read_at = now
            self._backlog = self._read()
            return self._backlog

    def _read(self) -> Backlog | None:
        self.reads += 1
        try:
            backlog = read_backlog(self._engine_now(), dead_after=self.dead_after)
        except SQLAlchemyError as exc:
            if not self._failing:
                logger.warning("cannot read the queues for metrics: %s", str(exc).splitlines()[0])
            self._failing = True
            return None
        if self._failing:
            logger.info("reading the queues for metrics again")
        self._failing = False
        return backlog

    def _engine_now(self) -> Engine:
        if self._engine is None:
            assert self._url is not None
            if parse_url(self._url).get_backend_name() == "sqlite":
                self._engine = create_database_engine(self._url)
            else:
                self._engine = create_database_engine(self._url, pool_size=1, max_overflow=0)
        return self._engine

    def close(self) -> None:
        """Dispose of the engine the collector opened (a borrowed one is left alone)."""
        if self._url is not None and self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "fuseline_queue_depth",
                "Steps QUEUED and claimable now, per workflow and queue (database-wide).",
                labels=["workflow", "queue"],
            ),
            GaugeMetricFamily(
                "fuseline_queue_oldest_age_seconds",
                "Seconds the oldest claimable step of the queue has waited since it became "
                "claimable (0 when none waits).",
                labels=["workflow", "queue"],
            ),
            GaugeMetricFamily(
                "fuseline_workers_alive",
                "Workers not stopped and heard from within two leases (database-wide).",
            ),
        )
