"""Retention: running workers delete what has been finished for long enough; no daemon.

Finished instances (SUCCEEDED, FAILED, CANCELLED) whose ``finished_at`` is older than the
retention (7 days by default) go with their steps, events and signals; the rows of workers
stopped (or silent) for more than a day go too. Children go before their parents, and
instances that are children of a RUNNING instance, or have a descendant that is kept, stay
(see :mod:`.queries.retention`).

Every transaction deletes at most ``rows_per_batch`` rows (500), locks instance rows before
steps as reports do, and skips the rows anyone else holds: pruning never waits for a claim
or a report, never makes one wait for long, and cannot deadlock with them. On PostgreSQL one
batch at a time runs across all workers (an advisory lock taken with a *try*), so however
many workers run, pruning costs the database at most one connection's worth of work.

:class:`RetentionPasses` is what the claim path calls. At most every ``interval`` seconds
(a tenth of the retention, between 1 and 60 s) a broker starts a pass: on PostgreSQL in a
thread of its own, batch after batch with a pause as long as each batch took between them,
so the worker's claims never wait behind its own pruning; on SQLite (one writer at a time
anyway) one batch inline per claim that finds one due.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, fields
from datetime import timedelta

from sqlalchemy import Connection

from ...errors import DatabaseError
from .database import Database
from .queries.retention import RetentionQueries, for_dialect

logger = logging.getLogger(__name__)

#: Finished instances are kept this long by default (``--retention``, ``FUSELINE_RETENTION``).
DEFAULT_RETENTION = timedelta(days=7)
#: The rows of workers stopped (or silent) this long are deleted.
WORKER_RETENTION = timedelta(days=1)
#: At most this many rows (of every table together) deleted per transaction.
BATCH_ROWS = 500
#: At most this many instances taken per transaction (their rows count in ``BATCH_ROWS``).
BATCH_INSTANCES = 50
#: At most this many worker rows deleted per transaction.
BATCH_WORKERS = 100
#: Bounds of the seconds between two passes of one broker.
INTERVAL_MIN, INTERVAL_MAX = 1.0, 60.0
#: The shortest pause between two batches of one pass.
PAUSE_MIN = 0.05
#: How long a pass waits for another worker's batch before trying again (``prune`` only).
BUSY_WAIT = 0.05


def retention_seconds(retention: float | timedelta | None) -> float | None:
    """Seconds of a retention given as seconds or a timedelta; None for 0 or None (keep all)."""
    if retention is None:
        return None
    seconds = retention.total_seconds() if isinstance(retention, timedelta) else float(retention)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"a retention is 0 (keep everything) or a positive duration, not {retention!r}")
    return seconds or None


def pass_interval(retention: float) -> float:
    """Seconds between two passes: a tenth of the retention, within 1 and 60 seconds."""
    return min(INTERVAL_MAX, max(INTERVAL_MIN, retention / 10))


@dataclass(frozen=True)
class PruneCounts:
    """Rows deleted (or, in a dry run, that would be), per table."""

    instances: int = 0
    steps: int = 0
    events: int = 0
    signals: int = 0
    workers: int = 0

    def __add__(self, other: PruneCounts) -> PruneCounts:
        return PruneCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Batch:
    deleted: PruneCounts
    #: Rows may be left to delete: the batch deleted something, or was full.
    more: bool
    #: Another worker's batch held the lock (PostgreSQL): nothing was done.
    busy: bool = False


@dataclass
class Pruner:
    """Deletes expired rows, a bounded batch per transaction."""

    db: Database
    queries: RetentionQueries
    rows_per_batch: int = BATCH_ROWS

    @classmethod
    def on(cls, db: Database) -> Pruner:
        return cls(db, for_dialect(db.dialect_name))

    def batch(self, age: float) -> Batch:
        """One transaction: up to ``BATCH_INSTANCES`` expired instances, locked, and their rows
        (events, then steps, then signals, then the instances), ``rows_per_batch`` at most."""
        q = self.queries
        with self.db.transaction() as conn:
            if not self._take_turn(conn):
                return Batch(PruneCounts(), more=True, busy=True)
            ids = list(
                conn.execute(q.instances_expired_lock, {"p_age": age, "p_limit": BATCH_INSTANCES}).scalars()
            )
            if not ids:
                return Batch(PruneCounts(), more=False)
            # The instance rows are kept room for; what is left of the budget goes to the rest.
            room = self.rows_per_batch - len(ids)
            deleted: dict[str, int] = {}
            for table, statement in (
                ("events", q.events_delete_of_instances),
                ("steps", q.steps_delete_of_instances),
                ("signals", q.signals_delete_of_instances),
            ):
                deleted[table] = conn.execute(statement, {"p_ids": ids, "p_limit": room}).rowcount
                room -= deleted[table]
                if room <= 0:  # perhaps more of them: the instances wait for a later batch
                    return Batch(PruneCounts(**deleted), more=True)
            deleted["instances"] = conn.execute(q.instances_delete, {"p_ids": ids}).rowcount
        # More may be left even after a short batch: the parents of the children just deleted.
        return Batch(PruneCounts(**deleted), more=deleted["instances"] > 0)

    def workers_batch(self, age: float = WORKER_RETENTION.total_seconds()) -> int:
        """Delete up to ``BATCH_WORKERS`` rows of workers stopped (or silent) for ``age`` seconds
        and holding no step; how many."""
        with self.db.transaction() as conn:
            params = {"p_worker_age": age, "p_limit": BATCH_WORKERS}
            return int(conn.execute(self.queries.workers_delete_expired, params).rowcount)

    def prune(self, age: float, worker_age: float = WORKER_RETENTION.total_seconds()) -> PruneCounts:
        """Delete everything expired now, batch after batch (waiting for other workers' batches)."""
        total = PruneCounts()
        while True:
            workers = self.workers_batch(worker_age)
            total += PruneCounts(workers=workers)
            if workers < BATCH_WORKERS:
                break
        while True:
            batch = self.batch(age)
            total += batch.deleted
            if batch.busy:
                time.sleep(BUSY_WAIT)
            elif not batch.more:
                return total

    def count(self, age: float, worker_age: float = WORKER_RETENTION.total_seconds()) -> PruneCounts:
        """What :meth:`prune` would delete now, in one read (a dry run)."""
        q = self.queries
        params = {"p_age": age, "p_worker_age": worker_age}
        with self.db.transaction() as conn:
            return PruneCounts(
                instances=conn.execute(q.instances_count_expired, params).scalar_one(),
                steps=conn.execute(q.steps_count_expired, params).scalar_one(),
                events=conn.execute(q.events_count_expired, params).scalar_one(),
                signals=conn.execute(q.signals_count_expired, params).scalar_one(),
                workers=conn.execute(q.workers_count_expired, params).scalar_one(),
            )

    def _take_turn(self, conn: Connection) -> bool:
        """PostgreSQL: one batch at a time across every worker, and no long lock waits."""
        if self.queries.batch_lock is None:
            return True
        if not conn.execute(self.queries.batch_lock).scalar_one():
            return False
        conn.execute(self.queries.batch_lock_timeout)  # type: ignore[arg-type]
        return True


class RetentionPasses:
    """The claim path's side of retention: :meth:`due` starts a pass when one is due.

    ``retention`` is in seconds (None: keep everything, no pass ever runs). ``background``
    runs each pass in a thread (PostgreSQL); otherwise :meth:`due` runs one batch itself.
    """

    def __init__(self, pruner: Pruner, retention: float | None, *, background: bool) -> None:
        self.pruner = pruner
        self.retention = retention
        self.background = background
        self.interval = pass_interval(retention) if retention else math.inf
        # The first pass comes after about an interval, so workers started together spread out.
        self._next = time.monotonic() + self.interval * random.uniform(0.5, 1.0)  # noqa: S311
        self._starting = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> None:
        """Called before each claim: cheap (a clock read) unless a pass is due."""
        if time.monotonic() < self._next or self.retention is None:
            return
        if not self._starting.acquire(blocking=False):
            return
        try:
            if time.monotonic() < self._next or self._stop.is_set():
                return
            if self._thread is not None and self._thread.is_alive():
                return  # the last pass is still going
            if not self.background:
                self._one_batch(self.retention)
                return
            self._next = math.inf  # until this pass ends
            self._thread = threading.Thread(
                target=self._pass, args=(self.retention,), name="fuseline-retention", daemon=True
            )
            self._thread.start()
        finally:
            self._starting.release()

    def _one_batch(self, retention: float) -> None:
        started = time.monotonic()
        self._next = started + self.interval
        try:
            deleted = PruneCounts(workers=self.pruner.workers_batch())
            batch = self.pruner.batch(retention)
        except DatabaseError as exc:
            logger.warning("retention: pruning put off: %s", str(exc).splitlines()[0])
            return
        self._log(deleted + batch.deleted)
        if batch.more:
            self._next = time.monotonic() + max(PAUSE_MIN, time.monotonic() - started)

    def _pass(self, retention: float) -> None:
        deleted = PruneCounts()
        try:
            deleted += PruneCounts(workers=self.pruner.workers_batch())
            while not self._stop.is_set():
                started = time.monotonic()
                batch = self.pruner.batch(retention)
                deleted += batch.deleted
                if not batch.more or batch.busy:  # done, or another worker is on it
                    break
                self._stop.wait(max(PAUSE_MIN, time.monotonic() - started))
        except DatabaseError as exc:
            if not self._stop.is_set():
                logger.warning("retention: pruning put off: %s", str(exc).splitlines()[0])
        finally:
            self._log(deleted)
            self._next = time.monotonic() + self.interval

    @staticmethod
    def _log(deleted: PruneCounts) -> None:
        if deleted.total:
            shown = ", ".join(f"{n} {table}" for table, n in deleted.as_dict().items() if n)
            logger.info("retention: deleted %s", shown)

    def close(self) -> None:
        """Stop a running pass (after its current batch) and wait for it."""
        self._stop.set()
        with self._starting:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
