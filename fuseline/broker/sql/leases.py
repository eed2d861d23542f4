"""Leases: which ones a worker's heartbeats renew, and taking back the ones that expired."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import Row

from ...states import EventKind, Status
from ...workflow.scheduling import RATE_WINDOW_MAX
from ..base import StepAssignment
from ..reports import WORKER_LOST
from .claimfloor import ClaimFloors
from .database import Database
from .history import History
from .plans import PlanCache
from .queries.claims import ClaimQueries
from .queries.events import EventQueries
from .queries.leases import LeaseQueries
from .queries.reports import ReportQueries
from .rows import aware
from .rules import InstanceRules

#: At most this many expired leases are handled per reaper pass.
REAP_BATCH = 100
#: At most this many RateLimit starts older than any window are deleted per reaper pass.
PRUNE_BATCH = 1000

HeldStep = tuple[str, str, int]  # instance id, step name, attempt


class HeldLeases:
    """Per worker registered through this broker: the steps handed to it and not reported yet.

    Only these are renewed by its heartbeats. A claim whose reply never reached
    the worker (the connection dropped after the commit) is therefore left to
    expire and run again, instead of staying RUNNING for as long as a worker
    that does not know it holds it keeps beating.
    """

    def __init__(self) -> None:
        self._held: dict[str, set[HeldStep]] = {}
        self._lock = threading.Lock()

    def start(self, worker_id: str) -> None:
        with self._lock:
            self._held[worker_id] = set()

    def stop(self, worker_id: str) -> None:
        with self._lock:
            self._held.pop(worker_id, None)

    def snapshot(self, worker_id: str) -> set[HeldStep] | None:
        """The steps to renew; None for a worker registered through another broker object."""
        with self._lock:
            held = self._held.get(worker_id)
            return set(held) if held is not None else None

    def hand(self, worker_id: str, assignments: Iterable[StepAssignment]) -> None:
        with self._lock:
            held = self._held.get(worker_id)
            if held is not None:
                held.update((str(a.instance_id), a.step_name, a.attempt) for a in assignments)

    def forget(self, worker_id: str, instance_id: str, step_name: str, attempt: int | None) -> None:
        """A step reported or given back (accepted or refused) is no longer the worker's to renew."""
        with self._lock:
            held = self._held.get(worker_id)
            if held:
                instance_id = str(instance_id)
                held.difference_update(
                    [key for key in held if key[:2] == (instance_id, step_name) and attempt in (None, key[2])]
                )

    def keep_only(self, worker_id: str, renewed: set[HeldStep], kept: set[HeldStep]) -> None:
        """After a heartbeat: of the steps it tried to renew, forget those no longer held."""
        with self._lock:
            self._held.get(worker_id, set()).difference_update(renewed - kept)


@dataclass
class Reaper:
    """Queues again the steps whose lease expired, fails those on their last attempt, and prunes
    the RateLimit starts that no window counts any more.

    Any broker does this while claiming (at most every ``interval`` seconds,
    and when a claim finds nothing), so no separate daemon is needed.
    Concurrent reapers split the rows (SKIP LOCKED), and every write re-checks
    that the step is still RUNNING and expired, so a report that commits
    first always wins.
    """

    db: Database
    leases: LeaseQueries
    reports: ReportQueries
    events: EventQueries
    rules: InstanceRules
    plans: PlanCache
    floors: ClaimFloors
    claims: ClaimQueries
    #: Seconds between reaper passes.
    interval: float
    _next: float = field(default=0.0, init=False)

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def reaping(self, claim: Callable[[], list]) -> list:
        """Run ``claim``, reaping first when a pass is due, or when the claim found nothing (then
        claiming again if the reaper put steps back)."""
        reaped = False
        if self.due():
            self.reap()
            reaped = True
        claimed = claim()
        if not claimed and not reaped and self.reap():
            claimed = claim()
        return claimed

    def reap(self) -> int:
        """One pass; returns how many expired steps it handled."""
        self._next = time.monotonic() + self.interval
        history = History()
        with self.db.transaction() as conn:
            expired = conn.execute(self.leases.steps_expired_requeueable, {"p_limit": REAP_BATCH}).all()
            if expired:
                conn.execute(self.leases.steps_requeue_expired, {"p_ids": [r.id for r in expired]})
                self.db.announce_work(conn)
                for r in expired:
                    history.add(
                        r.instance_id, EventKind.LEASE_EXPIRED, r.name, r.attempt, r.worker_id, claimed=True
                    )
                history.write(conn, self.events)
            final = conn.execute(self.leases.steps_expired_final, {"p_limit": REAP_BATCH}).all()
            conn.execute(self.claims.starts_prune, {"p_window": RATE_WINDOW_MAX, "p_limit": PRUNE_BATCH})
        # Committed: a claim that starts from now on sees the steps put back (see ClaimFloors).
        self.floors.lower([((r.workflow_id, r.version, r.queue), aware(r.available_at)) for r in expired])
        for row in final:
            self._fail_lost_step(row)
        return len(expired) + len(final)

    def _fail_lost_step(self, row: Row) -> None:
        history = History()
        with self.db.transaction() as conn:
            locked = conn.execute(self.reports.instance_lock, {"p_instance_id": row.instance_id}).first()
            if locked is None:
                return
            failed = conn.execute(
                self.leases.step_fail_if_expired,
                {"p_id": row.id, "p_attempt": row.attempt, "p_error": WORKER_LOST},
            ).first()
            if failed is None:
                return  # a report or another reaper got there first
            history.add(
                row.instance_id, EventKind.LEASE_EXPIRED, row.name, row.attempt, row.worker_id, claimed=True
            )
            history.add(row.instance_id, EventKind.FAILED, row.name, row.attempt, row.worker_id, WORKER_LOST)
            plan = self.plans.get(conn, (locked.workflow_id, locked.version))
            self.rules.step_ended(conn, row.instance_id, plan, row.name, Status.FAILED, WORKER_LOST, history)
            history.write(conn, self.events)
