"""Shapes chaos (issue 12): workers SIGKILLed in the middle of a Map's fan-out and of a
SubWorkflow's child dispatch, on PostgreSQL.

A trigger the test installs makes those two transactions pause inside the
database (``pg_sleep`` after the first item row, after the child is linked to
its parent); the test watches ``pg_stat_activity`` and SIGKILLs every worker
while one of them is in that pause, then starts new ones. The transaction
dies with its connection, the step that reported is claimed again after its
lease, and its report fans out (or dispatches) again. Pass:

- every instance SUCCEEDED with the exact sum (a lost or doubled item shows);
- every Map item accepted exactly once, and exactly ``size`` items per map;
- exactly one child instance per parent;
- ``verify()`` (items belong to maps, children to SubWorkflow steps) and
  ``fuseline db verify`` are clean;
- at least one kill landed inside each kind of transaction.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances, steps
from tests.chaos import shape_flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import assert_invariants, load_history
from tests.chaos.scale import pick, report
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, worker_env

pytestmark = pytest.mark.slow

INSTANCES = pick(12, 200)
SIZE = pick(40, 200)
WORKERS = pick(3, 8)
LEASE_SECONDS = 2.0
#: Kills wanted inside each kind of transaction.
KILLS_EACH = pick(2, 5)
PAUSE_SECONDS = 0.4
DRAIN_LIMIT_SECONDS = pick(240.0, 900.0)

SLOW = f"""
CREATE OR REPLACE FUNCTION chaos_pause() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep({PAUSE_SECONDS}); RETURN NULL; END $$;
CREATE TRIGGER chaos_pause_fan_out AFTER INSERT ON fuseline_steps
    FOR EACH ROW WHEN (NEW.item_index = 0) EXECUTE FUNCTION chaos_pause();
CREATE TRIGGER chaos_pause_child AFTER UPDATE OF parent_instance_id ON fuseline_instances
    FOR EACH ROW WHEN (NEW.parent_instance_id IS NOT NULL) EXECUTE FUNCTION chaos_pause();
"""
FAST = """
DROP TRIGGER IF EXISTS chaos_pause_fan_out ON fuseline_steps;
DROP TRIGGER IF EXISTS chaos_pause_child ON fuseline_instances;
"""
PAUSED = """
SELECT query FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event = 'PgSleep' AND state = 'active'
"""


def paused_in(engine: sa.Engine) -> str | None:
    """Which transaction a worker is paused in now: "fan_out", "child" or None."""
    with engine.connect() as conn:
        for (query,) in conn.execute(sa.text(PAUSED)).all():
            if "INSERT INTO fuseline_steps" in query:
                return "fan_out"
            if "UPDATE fuseline_instances" in query:
                return "child"
    return None


def running(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(instances).where(instances.c.status == "RUNNING")
        ).scalar_one()


@pytest.mark.timeout(DRAIN_LIMIT_SECONDS + 120)
def test_workers_killed_inside_a_fan_out_or_a_child_dispatch_lose_and_double_nothing(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db = chaos_postgres
    with db.engine.begin() as conn:
        conn.exec_driver_sql(SLOW)
    broker = SqlBroker(db.url)
    try:
        inputs = [{"n": n, "size": SIZE} for n in range(INSTANCES)]
        parents = broker.dispatch_many(shape_flows.nested.to_schema(), inputs)
    finally:
        broker.close()

    kills: Counter[str] = Counter()
    began = time.monotonic()
    options = ("--lease-seconds", str(LEASE_SECONDS))
    with Workers(tmp_path / "workers", db.url, "tests.chaos.shape_flows:nested", *options) as fleet:
        for _ in range(WORKERS):
            fleet.start()
        triggers = True
        while running(db.engine):
            assert time.monotonic() - began < DRAIN_LIMIT_SECONDS, fleet.logs(fleet.alive())
            broken = fleet.unexpected_exits()
            assert not broken, fleet.logs(broken)
            kind = paused_in(db.engine) if triggers else None
            if kind is not None and kills[kind] < KILLS_EACH:
                for worker in fleet.alive():
                    worker.kill()
                kills[kind] += 1
                for _ in range(WORKERS):
                    fleet.start()
            if triggers and min(kills["fan_out"], kills["child"]) >= KILLS_EACH:
                with db.engine.begin() as conn:
                    conn.exec_driver_sql(FAST)
                triggers = False
            time.sleep(0.01)
        seconds = time.monotonic() - began
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        started = len(fleet.started)

    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(instances.c.id, instances.c.status, instances.c.result, instances.c.inputs).where(
                instances.c.parent_instance_id.is_(None)
            )
        ).all()
        children = Counter(
            str(p)
            for (p,) in conn.execute(
                sa.select(instances.c.parent_instance_id).where(instances.c.parent_instance_id.is_not(None))
            ).all()
        )
        items = Counter(
            str(i)
            for (i,) in conn.execute(sa.select(steps.c.instance_id).where(steps.c.item_of.is_not(None))).all()
        )
    assert sorted(str(r.id) for r in rows) == sorted(parents)
    for row in rows:
        n = int(json.loads(row.inputs)["n"])
        assert (row.status, row.result) == ("SUCCEEDED", str(shape_flows.expected(n, SIZE))), row
    assert set(children.values()) == {1} and len(children) == INSTANCES, children
    assert set(items.values()) == {SIZE} and len(items) == INSTANCES, items
    accepted = Counter(
        (e.instance_id, e.step)
        for e in load_history(db.engine, ledger=False).of("succeeded")
        if e.step is not None and e.step.startswith("double[")
    )
    assert set(accepted.values()) == {1} and len(accepted) == INSTANCES * SIZE
    assert_invariants(db.engine)
    cli = subprocess.run(
        [str(SCRIPT), "db", "verify"],
        cwd=REPOSITORY,
        env=worker_env(db.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert kills["fan_out"] >= 1 and kills["child"] >= 1, f"kills landed: {dict(kills)}"
    report(
        "shapes",
        {
            "instances": INSTANCES,
            "items_per_map": SIZE,
            "workers": WORKERS,
            "kills_inside_fan_out": kills["fan_out"],
            "kills_inside_child_dispatch": kills["child"],
            "workers_started": started,
            "seconds": round(seconds, 1),
        },
    )
