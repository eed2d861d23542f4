"""``SlotLeases``: the steps a multi-slot worker is running, as its heartbeat sees them.

A worker with one slot tells its heartbeat the one step in hand
(``Heartbeat.current``); a worker with slots runs many at once, and each
needs the same check: after every beat, a running step whose lease is no
longer among the worker's leases (it expired and went to another worker)
is marked lost, and its result is dropped when it finishes instead of
reported. The heartbeat thread marks, the worker loop adds and removes:
hence the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ..broker.base import Lease, StepAssignment

#: What identifies one lease: (instance id, step name, attempt).
LeaseKey = tuple[str, str, int]


def lease_key(assignment: StepAssignment) -> LeaseKey:
    return (assignment.instance_id, assignment.step_name, assignment.attempt)


class SlotLeases:
    """The running steps of a worker's slots, and which of them a heartbeat found lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[LeaseKey] = set()
        self._lost: set[LeaseKey] = set()

    def add(self, key: LeaseKey) -> None:
        """A slot started the step of this lease."""
        with self._lock:
            self._running.add(key)

    def finish(self, key: LeaseKey) -> bool:
        """The step ended; returns whether its lease was lost meanwhile (its result is dropped)."""
        with self._lock:
            self._running.discard(key)
            if key in self._lost:
                self._lost.discard(key)
                return True
            return False

    def running(self) -> list[LeaseKey]:
        """The running steps now: a beat takes this before it asks the broker for the leases."""
        with self._lock:
            return list(self._running)

    def check(self, watched: Iterable[LeaseKey], leases: Iterable[Lease]) -> None:
        """After a beat: mark lost every ``watched`` step still running without a lease.

        A step that finished since ``watched`` was taken is left alone: its
        lease may be gone because its report was accepted.
        """
        held = {(lease.instance_id, lease.step_name, lease.attempt) for lease in leases}
        self.lose(key for key in watched if key not in held)

    def lose(self, keys: Iterable[LeaseKey]) -> None:
        """Mark lost those of ``keys`` still running (a beat refused: the worker was listed dead)."""
        with self._lock:
            for key in keys:
                if key in self._running:
                    self._lost.add(key)

    def lose_all(self) -> None:
        """Mark every running step lost (the worker registers again under a new id)."""
        with self._lock:
            self._lost |= self._running
