"""Chaos (issue 12): an ``--every 1`` schedule fired by worker processes, some SIGKILLed midway.

Scaled (``make test``): 4 workers for 10 s, one SIGKILLed halfway. Full
(``make chaos``): 8 workers for 60 s, two SIGKILLed halfway. No extra daemon
fires the schedule: the workers' claims do. Every tick between the first and
the last one fired must have exactly one instance (its key ``tick@TIME``),
none missing while workers ran, every instance must succeed, and ``verify()``
finds no violation.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.verify import verify
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import db_now
from tests.chaos.scale import SCHEDULES, report
from tests.chaos.workers import Workers, wait_for

pytestmark = pytest.mark.slow

NAME = "tick"
#: Seconds from the first worker being up to the first tick fired, at most.
FIRST_FIRE_WITHIN = 3.0


def scheduled_instances(engine: sa.Engine) -> list[tuple[str, str]]:
    """(key, status) of every instance of the schedule's workflow."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT key, status FROM fuseline_instances WHERE workflow_id = :w"),
            {"w": flows.unit.workflow_id},
        ).all()
    return [(row.key, row.status) for row in rows]


def tick_of(key: str) -> datetime:
    name, _, when = key.partition("@")
    assert name == NAME, key
    return datetime.fromisoformat(when)


def test_an_every_1_schedule_fires_once_per_tick_while_workers_are_killed(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db, cfg = chaos_postgres, SCHEDULES
    broker = SqlBroker(db.url)
    try:
        broker.add_schedule(flows.unit, name=NAME, every=1, inputs={"n": 1})
    finally:
        broker.close()
    rng = random.Random()

    options = ("--lease-seconds", "2", "--poll-interval", "0.2")
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:unit", *options) as fleet:
        for _ in range(cfg.workers):
            fleet.start()
        for worker in fleet.started:
            worker.wait_for_log("started (pid")
        began, began_at = time.monotonic(), db_now(db.engine)
        killed = False
        while time.monotonic() - began < cfg.seconds:
            broken = fleet.unexpected_exits()
            assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
            if not killed and time.monotonic() - began >= cfg.seconds / 2:
                for victim in rng.sample(fleet.alive(), cfg.kills):
                    victim.kill()
                killed = True
            time.sleep(0.05)
        broker = SqlBroker(db.url)
        try:
            broker.pause_schedule(NAME)  # no new tick from here on: the fleet can drain
        finally:
            broker.close()
        ended_at = db_now(db.engine)
        # the survivors finish what the killed ones held (their leases run out after 2 s)
        wait_for(
            lambda: all(status == "SUCCEEDED" for _, status in scheduled_instances(db.engine)),
            60,
            "every scheduled instance to succeed",
        )
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        tracebacks = [w for w in fleet.started if "Traceback" in w.stderr]
        assert not tracebacks, fleet.logs(tracebacks)

    instances = scheduled_instances(db.engine)
    per_tick = Counter(tick_of(key) for key, _ in instances)
    ticks = sorted(per_tick)
    expected = [
        ticks[0] + timedelta(seconds=s) for s in range(int((ticks[-1] - ticks[0]).total_seconds()) + 1)
    ]
    missing = sorted(set(expected) - set(per_tick))
    doubled = {t: n for t, n in per_tick.items() if n > 1}
    numbers = {
        "workers": cfg.workers,
        "killed": cfg.kills,
        "seconds": cfg.seconds,
        "ticks_fired": len(per_tick),
        "instances": len(instances),
        "missing_ticks": len(missing),
        "ticks_with_more_than_one_instance": len(doubled),
        "first_tick_after_start_s": round((ticks[0] - began_at).total_seconds(), 3),
        "last_tick_before_end_s": round((ended_at - ticks[-1]).total_seconds(), 3),
    }
    report("schedules_every_1", numbers)

    assert [str(v) for v in verify(db.engine)] == []
    assert doubled == {}, doubled
    assert missing == [], f"ticks without an instance: {[t.isoformat() for t in missing]}"
    assert all(t.microsecond == 0 for t in ticks), ticks
    assert ticks[0] <= began_at + timedelta(seconds=FIRST_FIRE_WITHIN), (ticks[0], began_at)
    assert ticks[-1] >= ended_at - timedelta(seconds=FIRST_FIRE_WITHIN), (ticks[-1], ended_at)
    assert len(per_tick) >= cfg.seconds - FIRST_FIRE_WITHIN
