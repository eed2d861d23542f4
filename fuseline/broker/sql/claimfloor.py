"""Where a claim starts reading the queue: a floor per workflow that follows the claims.

The claim walks ``ix_fuseline_steps_queued`` (workflow, version,
available_at, id) from the oldest entry. Each claimed step leaves a dead
QUEUED entry behind, which vacuum and index hint bits normally clear within
moments; while some session holds an old snapshot (a long report query, a
forgotten ``BEGIN``) nothing clears them, and a claim that starts at the
oldest entry steps over every step claimed since. So each broker remembers,
per workflow, when the oldest step of its last claim had become available,
and the next claim reads from a little before that (``FLOOR_SLACK``).

The floor is only a hint. A step below it (queued by a transaction that
committed more than ``FLOOR_SLACK`` late, or a claim that was rolled back)
is still found: a claim that finds nothing above the floor looks again from
the start before saying the queue is empty, and every ``FULL_SCAN_SECONDS``
a claim reads the whole queue anyway, so even under a queue that never
empties such a step waits at most that long. A full scan that finds one
moves the floor down to it. Full scans are kept rare because under an old
snapshot each one pays for all the dead entries (one claim in a few hundred
at a few dozen claims a second, below the 99th percentile).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

#: How far below the last claim the next one starts: commits that land a little late are seen.
FLOOR_SLACK = timedelta(seconds=1)
#: How often a claim ignores the floors and reads the queue from its oldest entry.
FULL_SCAN_SECONDS = 10.0


class ClaimFloors:
    """Per (workflow_id, version): the available_at below which claims need not look."""

    def __init__(self) -> None:
        self._floors: dict[tuple[str, str], datetime] = {}
        self._full_scan_at = 0.0

    def floors(self, keys: Sequence[tuple[str, str]]) -> list[datetime | None]:
        """The floors for the next claim; all None (read from the start) once per period."""
        now = time.monotonic()
        if now >= self._full_scan_at:
            self._full_scan_at = now + FULL_SCAN_SECONDS
            return [None] * len(keys)
        return [self._floors.get(key) for key in keys]

    def follow(self, claimed: Sequence[tuple[str, str, datetime]]) -> None:
        """Move each workflow's floor to just below the oldest step just claimed from it.

        ``claimed`` holds (workflow_id, version, available_at) in queue order.
        """
        seen: set[tuple[str, str]] = set()
        for workflow_id, version, available_at in claimed:
            key = (workflow_id, version)
            if key not in seen:
                seen.add(key)
                self._floors[key] = available_at - FLOOR_SLACK
