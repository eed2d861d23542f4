"""The order in which ``MemoryBroker`` hands queued steps out.

Claims take the highest priority first, then the step available first, then
the one created first, as ``SqlBroker`` orders its rows. Steps wait in one
lane per (workflow, version, queue), so a worker looks only at the lanes it
serves; a step whose time has not come waits apart until it has. Sleep steps
wait on a timer heap no worker claims from: the broker completes them.

Entries are never updated in place. A step queued again gets a new entry
and a new token; older entries (of steps claimed, cancelled or queued again
since) are dropped when they come up.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import NamedTuple


class Entry(NamedTuple):
    """One queued step, ordered as claims take them."""

    #: Minus the priority, so the highest priority sorts first.
    rank: int
    #: ``time.monotonic()`` from which it may be claimed.
    available_at: float
    #: Creation order of the step, the last tie-break.
    created: int
    instance_id: str
    step_name: str
    #: Matches the step's token while this entry is its current one.
    token: int


#: Whether an entry is still its step's current one (the step QUEUED with that token).
Current = Callable[[Entry], bool]


class _Lane:
    """The steps of one (workflow, version, queue): claimable now, and waiting for their time."""

    __slots__ = ("later", "ready")

    def __init__(self) -> None:
        self.ready: list[Entry] = []
        self.later: list[tuple[float, Entry]] = []

    def head(
        self, now: float, current: Current, allowed: Callable[[Entry], bool], skipped: list
    ) -> Entry | None:
        """The first entry a claim may take, left on top; entries it may not take go to ``skipped``."""
        while self.later and self.later[0][0] <= now:
            heapq.heappush(self.ready, heapq.heappop(self.later)[1])
        while self.ready:
            entry = self.ready[0]
            if not current(entry):
                heapq.heappop(self.ready)
            elif allowed(entry):
                return entry
            else:
                skipped.append((self, heapq.heappop(self.ready)))
        return None


class ReadyQueue:
    def __init__(self) -> None:
        self._lanes: dict[tuple[str, str], dict[str, _Lane]] = {}
        self._timers: list[tuple[float, Entry]] = []

    def push(self, key: tuple[str, str], queue: str, entry: Entry) -> None:
        lane = self._lanes.setdefault(key, {}).setdefault(queue, _Lane())
        heapq.heappush(lane.later, (entry.available_at, entry))

    def take(
        self,
        keys: Iterable[tuple[str, str]],
        queues: frozenset[str] | None,
        now: float,
        current: Current,
        allowed: Callable[[Entry], bool],
    ) -> Entry | None:
        """The first entry, in claim order, of these workflows and queues (None: every queue) that
        is available at ``now`` and ``allowed``, taken off the queue. Entries it was not allowed to
        take keep their place."""
        skipped: list[tuple[_Lane, Entry]] = []
        best: tuple[Entry, _Lane] | None = None
        for key in keys:
            for queue, lane in self._lanes.get(key, {}).items():
                if queues is not None and queue not in queues:
                    continue
                head = lane.head(now, current, allowed, skipped)
                if head is not None and (best is None or head < best[0]):
                    best = (head, lane)
        if best is not None:
            heapq.heappop(best[1].ready)
        for lane, entry in skipped:
            heapq.heappush(lane.ready, entry)
        return best[0] if best is not None else None

    def push_timer(self, entry: Entry) -> None:
        """A Sleep step, due at ``entry.available_at``."""
        heapq.heappush(self._timers, (entry.available_at, entry))

    def due_timers(self, now: float, current: Current) -> list[Entry]:
        """The Sleep steps due at ``now``, first due first, taken off the timers."""
        due = []
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)[1]
            if current(entry):
                due.append(entry)
        return due
