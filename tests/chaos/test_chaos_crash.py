"""Crash chaos (RELIABILITY item 1): workers SIGKILLed at random while they drain diamonds.

Real ``fuseline worker run tests.chaos.flows:diamond`` processes, each in a
process group of its own; every ``kill_every`` seconds a random live worker
is SIGKILLed (its kill time read from the database clock right after) and a
replacement started. Pass:

- every instance SUCCEEDED with the right result; nothing is left to run;
  ``verify()`` and ``fuseline db verify`` find no violation;
- exactly one accepted success (``succeeded`` event) per step;
- at least one ledger row per step, and never two under one claim;
- a step ran more than once only if a killed worker had claimed it;
- every orphan (a claim of a killed worker whose result was not accepted)
  expired and was claimed again within 2 x lease of the kill.

Heartbeats renew leases every lease/3 (built into the worker): 5/3 s at
full scale where the matrix says 1 s; the bound checked is the same.
"""

from __future__ import annotations

import random
import subprocess
import time
from bisect import bisect_left
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances
from fuseline.broker.sql.verify import verify
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import (
    assert_each_step_accepted_once,
    assert_invariants,
    db_now,
    ledger_by_step,
    load_history,
)
from tests.chaos.scale import CRASH_POSTGRES, CRASH_SQLITE, FULL, CrashChaos, pick, report
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, worker_env

pytestmark = pytest.mark.slow

#: The whole drain must end within this many seconds.
DRAIN_LIMIT_SECONDS = pick(150.0, 1800.0)
DISPATCH_BATCH = 1_000
#: How often verify() checks the live database during the run.
LIVE_VERIFY_EVERY_SECONDS = pick(3.0, 15.0)


def running_instances(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(instances).where(instances.c.status == "RUNNING")
        ).scalar_one()


def dispatch(url: str, inputs: list[dict]) -> list[str]:
    broker = SqlBroker(url)
    try:
        ids: list[str] = []
        for start in range(0, len(inputs), DISPATCH_BATCH):
            ids += broker.dispatch_many(flows.diamond.to_schema(), inputs[start : start + DISPATCH_BATCH])
        return ids
    finally:
        broker.close()


@pytest.mark.timeout(DRAIN_LIMIT_SECONDS + 120)
@pytest.mark.parametrize(
    ("dialect", "prefetch"),
    [
        pytest.param("postgres", 1, id="postgres"),
        # Alone, in the serial part of make test: SQLite workers poll, and with other test
        # processes beside them on a slow machine an orphan was once claimed again 6.23 s after
        # its kill (limit 2 x 3 s); what it checks is unchanged.
        pytest.param("sqlite", 1, id="sqlite", marks=pytest.mark.serial),
        pytest.param("postgres", 4, id="postgres-prefetch4"),
    ],
)
def test_workers_killed_at_random_lose_nothing_and_each_step_is_accepted_once(
    dialect: str, prefetch: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With ``--prefetch 4`` a killed worker also holds steps it has not started and results it
    has not reported yet: they must come back through lease expiry like any other orphan."""
    db: ChaosDatabase = request.getfixturevalue(f"chaos_{dialect}")
    cfg: CrashChaos = CRASH_POSTGRES if dialect == "postgres" else CRASH_SQLITE
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ids = dispatch(db.url, [{"n": n, "pause": cfg.pause} for n in range(cfg.instances)])
    ids_by_n = dict(enumerate(ids))

    kills: list[tuple[int, datetime]] = []  # (pid, database time right after the SIGKILL)
    live_checks = 0  # verify() on the live database, as an operator would run it mid-run
    began = time.monotonic()
    options = ("--lease-seconds", str(cfg.lease_seconds), "--prefetch", str(prefetch))
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:diamond", *options) as fleet:
        for _ in range(cfg.workers):
            fleet.start()
        next_kill = time.monotonic() + cfg.kill_every
        next_check = time.monotonic() + LIVE_VERIFY_EVERY_SECONDS / 2
        while running_instances(db.engine):
            assert time.monotonic() - began < DRAIN_LIMIT_SECONDS, (
                f"not drained within {DRAIN_LIMIT_SECONDS:g} s (seed {seed}):\n{fleet.logs(fleet.alive())}"
            )
            broken = fleet.unexpected_exits()
            assert not broken, f"a worker exited on its own (seed {seed}):\n{fleet.logs(broken)}"
            if time.monotonic() >= next_kill:
                victim = rng.choice(fleet.alive())
                victim.kill()
                kills.append((victim.pid, db_now(db.engine)))
                fleet.start()
                next_kill += cfg.kill_every
            if time.monotonic() >= next_check:
                violations = [str(v) for v in verify(db.engine)]
                assert violations == [], violations[:10]
                live_checks += 1
                next_check = time.monotonic() + LIVE_VERIFY_EVERY_SECONDS
            time.sleep(0.02)
        seconds = time.monotonic() - began
        for worker in fleet.alive():
            worker.wait_for_log("started (pid")
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        tracebacks = [w for w in fleet.started if "Traceback" in w.stderr]
        assert not tracebacks, fleet.logs(tracebacks)
        started = len(fleet.started)

    history = load_history(db.engine)
    for n, instance_id in ids_by_n.items():
        status, result = history.instance_states[instance_id]
        assert (status, result) == ("SUCCEEDED", str(flows.diamond_result(n))), (instance_id, status, result)
    assert_each_step_accepted_once(history, ids, flows.DIAMOND_STEPS)
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
    executions = ledger_by_step(history, ids_by_n, flows.DIAMOND_STEPS)

    # Which worker ids were killed, and when (a pid may be reused by a later worker).
    kill_times: dict[int, list[datetime]] = defaultdict(list)
    for pid, at in kills:
        kill_times[pid].append(at)
    killed_at: dict[str, datetime] = {}
    for worker_id, pid in history.worker_pids.items():
        times = sorted(kill_times.get(pid, []))
        later = [t for t in times if t >= history.worker_started[worker_id]]
        if later:
            killed_at[worker_id] = later[0]

    claims: dict[tuple[str, str], list] = defaultdict(list)
    for event in history.of("claimed"):
        claims[(event.instance_id, event.step)].append(event)
    accepted = {(e.instance_id, e.step): e.attempt for e in history.of("succeeded")}
    expired = {(e.instance_id, e.step, e.attempt) for e in history.of("lease_expired")}

    reruns = {key: rows for key, rows in executions.items() if len(rows) > 1}
    for key, rows in reruns.items():
        claimers = {e.worker_id for e in claims[key]}
        assert claimers & set(killed_at), (
            f"{key} ran {len(rows)} times but no killed worker claimed it: {rows} {claims[key]}"
        )

    recoveries: list[float] = []
    for key, events in claims.items():
        attempts = [e.attempt for e in events]
        for event in events:
            if event.worker_id not in killed_at or event.attempt == accepted[key]:
                continue  # not an orphan: the worker lived, or reported before it was killed
            assert (*key, event.attempt) in expired, f"orphan {key} attempt {event.attempt} never expired"
            following = bisect_left(attempts, event.attempt + 1)
            assert following < len(events), f"orphan {key} attempt {event.attempt} never claimed again"
            recovered = (events[following].at - killed_at[event.worker_id]).total_seconds()
            recoveries.append(recovered)
            assert recovered <= 2 * cfg.lease_seconds, (
                f"orphan {key} attempt {event.attempt} claimed again {recovered:.2f} s after the kill "
                f"(limit 2 x {cfg.lease_seconds:g} s)"
            )

    assert len(kills) >= 3, f"only {len(kills)} kills: the run ended too soon to test anything"
    assert recoveries, "no kill orphaned a step: the run tested no recovery"
    numbers = {
        "dialect": dialect,
        "prefetch": prefetch,
        "workers": cfg.workers,
        "instances": cfg.instances,
        "steps": len(ids) * len(flows.DIAMOND_STEPS),
        "lease_seconds": cfg.lease_seconds,
        "kill_every_seconds": cfg.kill_every,
        "kills": len(kills),
        "verify_on_the_live_database": live_checks,
        "workers_started": started,
        "orphans": len(recoveries),
        "reruns": sum(len(rows) - 1 for rows in reruns.values()),
        "rerun_steps": len(reruns),
        "max_recovery_seconds": round(max(recoveries), 3),
        "drain_seconds": round(seconds, 2),
        "seed": seed,
        "full_scale": FULL,
    }
    report(f"crash_chaos_{dialect}" + (f"_prefetch{prefetch}" if prefetch > 1 else ""), numbers)


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_verify_runs_on_a_live_database(dialect: str, request: pytest.FixtureRequest) -> None:
    """``verify()`` (``fuseline db verify``) on a database with unfinished instances: no crash, no
    violation. It used to fail on the finish time of steps that had not finished (None)."""
    db: ChaosDatabase = request.getfixturevalue(f"chaos_{dialect}")
    dispatch(db.url, [{"n": 1}])
    assert verify(db.engine) == []
    cli = subprocess.run(
        [str(SCRIPT), "db", "verify"],
        cwd=REPOSITORY,
        env=worker_env(db.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0 and "every invariant holds" in cli.stdout, cli.stdout + cli.stderr
