"""Slot chaos: a worker running many steps at once (``--slots``) is SIGKILLed mid-batch.

Real ``fuseline worker run tests.chaos.test_chaos_slots:slot_chain --slots S``
processes drain two-step instances (an ``AsyncStep`` awaiting, then a plain
step sleeping on a thread). Once the first worker has a batch in flight it
is SIGKILLed and a replacement started; the replacement is SIGKILLed in
turn mid-batch, and a third worker finishes the drain. Every step execution
first appends a line to a ledger file (``n step pid``, one ``O_APPEND``
write, so a kill never tears a line). Pass:

- every instance SUCCEEDED with the right result; nothing is left to run;
  ``verify()`` and ``fuseline db verify`` find no violation;
- exactly one accepted success (``succeeded`` event) per step;
- every step ran at least once; a step ran more than once only if a killed
  worker had claimed it;
- the kills orphaned steps (leases that expired and were claimed again):
  the run tested recovery, not just a drain.

The workflow lives in this module so the test needs no other file; the
workers import it from the repository like ``tests.chaos.flows``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from fuseline import AsyncStep, Computed, Depends, Step, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances as instances_table
from tests.chaos.history import (
    LedgerRow,
    assert_each_step_accepted_once,
    assert_invariants,
    db_now,
    ledger_by_step,
    load_history,
)
from tests.chaos.scale import FULL, pick, report
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, wait_for, worker_env

if TYPE_CHECKING:  # the workers import this module: they need the workflow, not the fixtures
    from tests.chaos.conftest import ChaosDatabase

pytestmark = pytest.mark.slow

#: Slots of each worker process, and the instances drained (two steps each).
SLOTS = pick(20, 100)
INSTANCES = {"postgres": pick(200, 2_000), "sqlite": pick(100, 500)}
#: Seconds each step waits: long enough that a kill always finds a batch in flight.
PAUSE = 0.2
LEASE_SECONDS = 2.0
DRAIN_LIMIT_SECONDS = pick(120.0, 600.0)
STEPS = ("fetch", "store")


# -- the workflow the workers run ----------------------------------------------------------------
def record(ledger: str, n: int, step: str) -> None:
    """Append this execution to the ledger folder's file of this process (one write per line)."""
    line = f"{n} {step} {os.getpid()}\n".encode()
    fd = os.open(Path(ledger) / f"{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Fetch(AsyncStep):
    async def run_step(self, n: int, ledger: str, pause: float) -> int:
        record(ledger, n, "fetch")
        await asyncio.sleep(pause)
        return 2 * n


fetch = Fetch(name="fetch")


class Store(Step):
    def run_step(self, n: int, ledger: str, pause: float, value: Computed[int] = Depends(fetch)) -> int:
        record(ledger, n, "store")
        time.sleep(pause)
        return value + 1


slot_chain = Workflow([Store(name="store")], workflow_id="chaos-slot-chain", version="1")


# -- the test ------------------------------------------------------------------------------------
def read_ledger(folder: Path) -> list[LedgerRow]:
    rows = []
    for path in sorted(folder.glob("*.log")):
        for line in path.read_text().splitlines():
            n, step, pid = line.split()
            rows.append(LedgerRow(int(n), None, step, None, int(pid)))
    return rows


def running_instances(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(instances_table)
        return conn.execute(query.where(instances_table.c.status == "RUNNING")).scalar_one()


def dispatch(url: str, ledger: Path, count: int) -> list[str]:
    broker = SqlBroker(url)
    try:
        inputs = [{"n": n, "ledger": str(ledger), "pause": PAUSE} for n in range(count)]
        return broker.dispatch_many(slot_chain.to_schema(), inputs)
    finally:
        broker.close()


@pytest.mark.timeout(DRAIN_LIMIT_SECONDS + 120)
@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_a_worker_killed_with_every_slot_busy_loses_nothing_and_each_step_is_accepted_once(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db: ChaosDatabase = request.getfixturevalue(f"chaos_{dialect}")
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    instances = INSTANCES[dialect]
    ids = dispatch(db.url, ledger, instances)
    ids_by_n = dict(enumerate(ids))
    total = instances * len(STEPS)

    kills: list[tuple[int, datetime]] = []
    began = time.monotonic()
    options = ("--slots", str(SLOTS), "--lease-seconds", str(LEASE_SECONDS))
    with Workers(tmp_path / "workers", db.url, "tests.chaos.test_chaos_slots:slot_chain", *options) as fleet:
        for fraction in (0.25, 0.6):  # kill the worker of the moment at these shares of the ledger
            victim = fleet.start()
            victim.wait_for_log("started (pid")
            wait_for(
                lambda f=fraction: len(read_ledger(ledger)) >= f * total,
                DRAIN_LIMIT_SECONDS,
                f"{fraction:.0%} of the steps to start",
                interval=0.01,
            )
            victim.kill()
            kills.append((victim.pid, db_now(db.engine)))
        finisher = fleet.start()
        while running_instances(db.engine):
            assert time.monotonic() - began < DRAIN_LIMIT_SECONDS, (
                f"not drained within {DRAIN_LIMIT_SECONDS:g} s:\n{fleet.logs()}"
            )
            assert finisher.alive(), f"the last worker exited on its own:\n{fleet.logs()}"
            time.sleep(0.05)
        seconds = time.monotonic() - began
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        tracebacks = [w for w in fleet.started if "Traceback" in w.stderr]
        assert not tracebacks, fleet.logs(tracebacks)

    history = dataclasses.replace(load_history(db.engine, ledger=False), ledger=read_ledger(ledger))
    for n, instance_id in ids_by_n.items():
        assert history.instance_states[instance_id] == ("SUCCEEDED", str(2 * n + 1)), instance_id
    assert_each_step_accepted_once(history, ids, STEPS)
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
    executions = ledger_by_step(history, ids_by_n, STEPS)

    killed_pids = {pid for pid, _ in kills}
    killed = {worker_id for worker_id, pid in history.worker_pids.items() if pid in killed_pids}
    assert len(killed) == len(kills), f"killed workers {killed} for kills {kills}"
    claimers: dict[tuple[str, str], set[str | None]] = defaultdict(set)
    for event in history.of("claimed"):
        claimers[(event.instance_id, event.step)].add(event.worker_id)  # type: ignore[index]
    reruns = {key: rows for key, rows in executions.items() if len(rows) > 1}
    for key, rows in reruns.items():
        assert claimers[key] & killed, f"{key} ran {len(rows)} times but no killed worker claimed it: {rows}"
    orphans = [e for e in history.of("lease_expired") if e.worker_id in killed]
    assert orphans, "no kill left a step behind: the run tested no recovery"
    lost_by_the_living = [e for e in history.of("lease_expired") if e.worker_id not in killed]
    assert not lost_by_the_living, f"a live worker lost a lease: {lost_by_the_living[:5]}"
    held_at_kill = max(sum(1 for e in orphans if e.worker_id == w) for w in killed)

    report(
        f"slot_chaos_{dialect}",
        {
            "dialect": dialect,
            "slots": SLOTS,
            "instances": instances,
            "steps": total,
            "kills": len(kills),
            "orphans": len(orphans),
            "most_orphans_of_one_kill": held_at_kill,
            "reruns": sum(len(rows) - 1 for rows in reruns.values()),
            "drain_seconds": round(seconds, 2),
            "full_scale": FULL,
        },
    )
