"""How big the chaos tests run, decided in this one place, and where their numbers go.

``make test`` runs them scaled down (the whole folder in a few minutes on a
2-core box); ``make chaos`` sets ``FUSELINE_CHAOS_SCALE=full`` for the sizes
of the reliability matrix in the README. Every test prints
its numbers (shown with ``-s``) and, when ``FUSELINE_CHAOS_REPORT`` names a
file, adds them to a JSON summary there; the session ends with all of them
in one table (see ``tests/chaos/conftest.py``).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SCALE_ENV = "FUSELINE_CHAOS_SCALE"
REPORT_ENV = "FUSELINE_CHAOS_REPORT"

FULL = os.environ.get(SCALE_ENV, "").strip().lower() == "full"
SCALE = "full" if FULL else "scaled"

T = TypeVar("T")


def pick(scaled: T, full: T) -> T:
    return full if FULL else scaled


@dataclass(frozen=True)
class CrashChaos:
    """Item 1: workers SIGKILLed at random while they drain diamonds."""

    workers: int
    instances: int
    lease_seconds: float
    kill_every: float
    #: Seconds the step body sleeps (a few ms of "work").
    pause: float = 0.005


# Scaled down, the lease is 3 s rather than 2: an orphan is claimed again once its lease ends
# and a live worker next polls, and on a loaded 2-core box the live worker is often one still
# starting up (kills come every second or less), which took a 2 s lease's orphan 4.3 s once.
CRASH_POSTGRES = CrashChaos(
    workers=pick(4, 8), instances=pick(300, 5_000), lease_seconds=pick(3.0, 5.0), kill_every=pick(1.0, 0.5)
)
CRASH_SQLITE = CrashChaos(
    workers=2, instances=pick(150, 200), lease_seconds=pick(3.0, 5.0), kill_every=pick(0.7, 0.5)
)

#: Item 4 and 8: the lease of the hung or partitioned worker.
HUNG_LEASE_SECONDS = 2.0
PARTITION_LEASE_SECONDS = 2.0

#: Item 5: B and C of a diamond report at the same moment, this many times per join kind.
JOIN_RACES = pick(100, 1_000)


@dataclass(frozen=True)
class Contention:
    claimers: int
    steps: int


#: Item 6: many claimers on one queue.
CONTENTION_POSTGRES = Contention(claimers=pick(8, 32), steps=pick(2_000, 10_000))
CONTENTION_SQLITE = Contention(claimers=pick(4, 8), steps=pick(500, 2_000))


@dataclass(frozen=True)
class Restart:
    workers: int
    instances: int
    lease_seconds: float
    #: Each wave of instances is dispatched after one disruption, so every
    #: worker has work to show it recovered.
    waves: int = 4


#: Item 7: the database restarted twice and every session terminated while workers run.
RESTART = Restart(workers=4, instances=pick(200, 500), lease_seconds=3.0)
#: Seconds a worker may take to work again after the database is back.
RECOVERY_LIMIT_SECONDS = 30.0


@dataclass(frozen=True)
class Poison:
    workers: int
    #: Healthy single-step instances in each of the two runs (baseline, with poison).
    instances: int
    lease_seconds: float
    pause: float


#: Item 10: a step that kills its worker, and the throughput of everything else.
POISON = Poison(workers=4, instances=pick(3_000, 6_000), lease_seconds=1.0, pause=0.02)
#: Healthy throughput with the poison step must stay at least this share of the baseline.
POISON_MIN_RATIO = 0.9


@dataclass(frozen=True)
class Bloat:
    #: Steps drained before the snapshot is taken (the baseline) and while it is held.
    baseline_steps: int
    held_steps: int
    #: Steps dispatched per second (None: all at once, drained as fast as possible).
    rate: float | None
    claimers: int = 2


#: Item 11: a REPEATABLE READ snapshot held while steps drain (full: 50k steps over 10 minutes).
BLOAT = pick(
    Bloat(baseline_steps=2_000, held_steps=5_000, rate=None),
    Bloat(baseline_steps=5_000, held_steps=50_000, rate=50_000 / 600),
)
BLOAT_MAX_P99_RATIO = 5.0


@dataclass(frozen=True)
class ScheduleChaos:
    """Issue 12: workers fire an ``--every 1`` schedule while ``kills`` of them are SIGKILLed midway."""

    workers: int
    seconds: float
    kills: int


SCHEDULES = ScheduleChaos(workers=pick(4, 8), seconds=pick(10.0, 60.0), kills=pick(1, 2))


@dataclass(frozen=True)
class Timeouts:
    """Issue 16 case 3: workers whose role has a ``statement_timeout`` and a ``lock_timeout``."""

    workers: int
    instances: int
    lease_seconds: float


TIMEOUTS = Timeouts(workers=pick(3, 8), instances=pick(200, 2_000), lease_seconds=5.0)


@dataclass(frozen=True)
class Failover:
    """Issue 16 case 1: the primary SIGKILLed under load and its hot standby promoted."""

    workers: int
    instances: int
    lease_seconds: float
    #: Diamonds dispatched per second while the workers run (the kill comes mid-way).
    dispatch_rate: float


FAILOVER = Failover(
    workers=pick(3, 8), instances=pick(150, 2_000), lease_seconds=5.0, dispatch_rate=pick(15.0, 60.0)
)
#: Seconds from the last step finished before the kill to the first accepted after the promotion.
FAILOVER_RECONNECT_LIMIT_SECONDS = 10.0


@dataclass(frozen=True)
class SlowNetwork:
    """Issue 16 case 5: workers reach the database over a slow, lossy link (a shaping proxy)."""

    workers: int
    #: Instances drained once direct and once through the slow link.
    instances: int
    lease_seconds: float
    #: One-way delay; the round trip is twice this.
    delay_seconds: float
    #: Share of chunks "lost", each held for ``stall_seconds`` (a retransmission timeout).
    loss: float
    stall_seconds: float


SLOW_NETWORK = SlowNetwork(
    workers=pick(4, 8),
    instances=pick(48, 500),
    lease_seconds=3.0,
    delay_seconds=0.025,
    loss=0.01,
    stall_seconds=0.25,
)


@dataclass(frozen=True)
class FullDisk:
    """Issue 16 case 4: the database's disk (a tmpfs tablespace) filled under load, then freed."""

    workers: int
    #: Diamonds dispatched per second, before, during and after the full disk.
    rate: float
    #: Diamonds dispatched at once just before the disk fills (the workers drain them meanwhile).
    backlog: int
    lease_seconds: float
    before_seconds: float
    full_seconds: float
    after_seconds: float


FULL_DISK = FullDisk(
    workers=pick(3, 8),
    rate=pick(20.0, 50.0),
    backlog=pick(200, 1_000),
    lease_seconds=3.0,
    before_seconds=pick(3.0, 10.0),
    full_seconds=pick(5.0, 20.0),
    after_seconds=pick(3.0, 10.0),
)

_report_lock = threading.Lock()
#: Every report of this test process, in order: the table printed at the end of the session.
REPORTED: list[tuple[str, dict[str, Any]]] = []


def report(name: str, numbers: dict[str, Any]) -> None:
    """Print a test's numbers and add them to the JSON summary (``$FUSELINE_CHAOS_REPORT``)."""
    shown = ", ".join(f"{k}={_short(v)}" for k, v in numbers.items())
    print(f"\n[chaos {SCALE}] {name}: {shown}")
    REPORTED.append((name, numbers))
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    with _report_lock:
        summary: dict[str, Any] = {}
        if path.exists():
            try:
                summary = json.loads(path.read_text() or "{}")
            except json.JSONDecodeError:
                summary = {}
        summary.setdefault("scale", SCALE)
        summary.setdefault("tests", {})[name] = numbers
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


def summary_table() -> list[str]:
    """The session's reports as one Markdown table: a row per test, its numbers in one cell."""
    if not REPORTED:
        return []
    rows = [f"| test ({SCALE}) | numbers |", "| --- | --- |"]
    for name, numbers in REPORTED:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in numbers.items() if k != "full_scale")
        rows.append(f"| {name} | {shown.replace('|', '/')} |")
    return rows


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
