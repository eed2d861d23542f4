"""Where a claim starts reading the queue: a floor per workflow that follows the claims.

The claim walks ``ix_fuseline_steps_queued`` (workflow, version,
available_at, id) from the oldest entry. Each claimed step leaves a dead
QUEUED entry behind, which vacuum and index hint bits normally clear within
moments; while some session holds an old snapshot (a long report query, a
forgotten ``BEGIN``) nothing clears them, and a claim that starts at the
oldest entry steps over every step claimed since. So each broker remembers,
per workflow, when the oldest step of its last claim had become available,
and the next claim reads from a little before that (``FLOOR_SLACK``).

Steps whose lease expired go back to their old place in line, below the
floors; the broker that reaps them lowers its own floors (``lower``, after
its transaction committed), so its next claims take them first. A broker
claims on several threads at once (a prefetching worker, and above all
``fuseline server``, whose one broker claims for every worker behind it), so
a claim that started before the lowering, and could not see the steps put
back, must not raise the floor over them when it ends: each lowering *pins*
the floor, and only a claim that started after it may lift the pin (it read
from the lowered floor, so the steps were its own or a concurrent claim's).
Without the pin, such steps waited for the next full scan, up to 10 s.

The floor is only a hint. A step below it (queued by a transaction that
committed more than ``FLOOR_SLACK`` late, or a claim that was rolled back)
is still found by a *full scan*, a claim that reads the whole queue: when a
claim finds nothing above the floor and the last full scan is more than
``RESCAN_WHEN_EMPTY_SECONDS`` old, and every ``FULL_SCAN_SECONDS`` in any
case, so such a step waits at most that long even under a queue that never
empties. A full scan that finds one moves the floor down to it. Full scans
are kept rare because under an old snapshot each one pays for all the dead
entries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

#: How far below the last claim the next one starts: commits that land a little late are seen.
FLOOR_SLACK = timedelta(seconds=1)
#: How often a claim ignores the floors and reads the queue from its oldest entry.
FULL_SCAN_SECONDS = 10.0
#: A claim that found nothing above the floors looks from the start if no full scan ran for this long.
RESCAN_WHEN_EMPTY_SECONDS = 1.0


#: What a floor belongs to: (workflow_id, version, queue).
Key = tuple[str, str, str]


class ClaimFloors:
    """Per (workflow_id, version, queue): the available_at below which claims of steps of the
    default priority need not look. Steps of other priorities are always read from their
    first entry (they are the exception, and a floor would hide newer, more urgent ones)."""

    def __init__(self) -> None:
        self._floors: dict[Key, datetime] = {}
        self._last_full_scan = float("-inf")
        self._lock = threading.Lock()
        #: Bumped by each lowering; a claim's ticket is its value when the claim started.
        self._epoch = 0
        #: Per key: the lowest floor a lowering set, and the epoch it set it in.
        self._pins: dict[Key, tuple[datetime, int]] = {}

    def ticket(self) -> int:
        """Taken before a claim reads its floors, and handed back to :meth:`follow`."""
        return self._epoch

    def for_next_claim(self, keys: Sequence[Key]) -> list[datetime | None]:
        """The floors the next claim reads from: all None (a full scan) once per
        ``FULL_SCAN_SECONDS``, which this call counts as done."""
        if self._due(FULL_SCAN_SECONDS):
            return [None] * len(keys)
        return [self._floors.get(key) for key in keys]

    def rescan_when_empty(self) -> bool:
        """Whether a claim that found nothing above the floors should look again from the start."""
        return self._due(RESCAN_WHEN_EMPTY_SECONDS)

    def _due(self, period: float) -> bool:
        now = time.monotonic()
        if now - self._last_full_scan < period:
            return False
        self._last_full_scan = now
        return True

    def follow(self, claimed: Sequence[tuple[Key, int, datetime]], ticket: int | None = None) -> None:
        """Move each key's floor to just below the oldest default-priority step just claimed.

        ``claimed`` holds (key, urgency, available_at) in queue order; ``ticket`` is the
        claim's (:meth:`ticket`): a claim older than a key's pin leaves the floor at the pin.
        """
        seen: set[Key] = set()
        with self._lock:
            for key, urgency, available_at in claimed:
                if urgency != 0 or key in seen:
                    continue
                seen.add(key)
                floor = available_at - FLOOR_SLACK
                pin = self._pins.get(key)
                if pin is not None:
                    if ticket is None or ticket < pin[1]:
                        floor = min(floor, pin[0])  # it could not see what the lowering put back
                    else:
                        del self._pins[key]
                self._floors[key] = floor

    def lower(self, requeued: Sequence[tuple[Key, datetime | None]]) -> None:
        """Steps put back at their old place in line (expired leases): the next claims see them.

        ``requeued`` holds (key, available_at). Only this broker's floors move;
        other brokers find the steps at their next full scan, and this one
        (which reaped them while claiming) claims them first.
        """
        with self._lock:
            self._epoch += 1
            for key, available_at in requeued:
                if available_at is None:
                    continue
                floor = available_at - FLOOR_SLACK
                current = self._floors.get(key)
                if current is not None and floor < current:
                    self._floors[key] = floor
                pin = self._pins.get(key)
                self._pins[key] = (min(floor, pin[0]) if pin is not None else floor, self._epoch)


class NoFloors(ClaimFloors):
    """Claims that always read the whole queue (the general path: its claim takes no floor)."""

    def for_next_claim(self, keys: Sequence[Key]) -> list[datetime | None]:
        return [None] * len(keys)

    def rescan_when_empty(self) -> bool:
        return False

    def follow(self, claimed: Sequence[tuple[Key, int, datetime]], ticket: int | None = None) -> None:
        pass

    def lower(self, requeued: Sequence[tuple[Key, datetime | None]]) -> None:
        pass
