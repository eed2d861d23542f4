"""Flow control under crashes: limits hold and retries survive while workers are SIGKILLed.

- Workers (``fuseline worker run``) are killed at random while they drain a
  workflow whose first step fails once for every fourth instance (a
  RetryPolicy retries it 2 s later, scheduled by the broker) and whose second
  step allows 3 at once (ConcurrencyLimit(3)). Every 50 ms the test counts
  that step's RUNNING rows with a live lease: never more than 3. From the
  execution ledger, the executions that ran to their end never overlapped
  more than 3 at a time either. Every instance SUCCEEDED, every retry
  happened (none lost to a kill), ``verify()`` is clean (it checks limits,
  lost retries and leases of waiting steps too).
- Four workers drain a step under RateLimit(5, per=1 s): in any window of
  one second, at most 5 of its claims (from the history), and each execution
  (from the ledger) ran once, after its own claim.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import starts, steps
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import assert_invariants, aware, load_history
from tests.chaos.scale import pick, report
from tests.chaos.workers import Workers

pytestmark = pytest.mark.slow

WORKERS = pick(4, 8)
INSTANCES = pick(150, 2_000)
KILL_EVERY = pick(1.5, 1.0)
LEASE_SECONDS = 2.0
DRAIN_LIMIT_SECONDS = pick(180.0, 900.0)


def dispatch(url: str, workflow, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    broker = SqlBroker(url)
    try:
        return broker.dispatch_many(workflow.to_schema(), [{"n": n} for n in range(count)])
    finally:
        broker.close()


def running_narrow(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(
                steps.c.state == "RUNNING", steps.c.name == "narrow", steps.c.lease_expires_at > sa.func.now()
            )
        ).scalar_one()


def unfinished(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM fuseline_instances WHERE status = 'RUNNING'"
        ).scalar_one()


def ledger_times(engine: sa.Engine, step: str) -> list[tuple[int, int, datetime]]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT n, pid, at FROM {flows.LEDGER_TABLE} WHERE step = %(s)s ORDER BY id", {"s": step}
        )
        return [(r[0], r[1], aware(r[2])) for r in rows]


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, change in edges:
        current += change
        peak = max(peak, current)
    return peak


def test_a_concurrency_limit_holds_and_retries_survive_while_workers_are_killed(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db = chaos_postgres
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ids = dispatch(db.url, flows.limited, INSTANCES)
    samples, peak, kills = 0, 0, 0
    began = time.monotonic()
    options = ("--lease-seconds", str(LEASE_SECONDS))
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:limited", *options) as fleet:
        for _ in range(WORKERS):
            fleet.start()
        next_kill = time.monotonic() + KILL_EVERY
        while unfinished(db.engine):
            assert time.monotonic() - began < DRAIN_LIMIT_SECONDS, (
                f"not drained (seed {seed}):\n{fleet.logs()}"
            )
            broken = fleet.unexpected_exits()
            assert not broken, f"a worker exited on its own (seed {seed}):\n{fleet.logs(broken)}"
            peak = max(peak, running_narrow(db.engine))
            samples += 1
            assert peak <= flows.NARROW_LIMIT, (
                f"{peak} RUNNING under a limit of {flows.NARROW_LIMIT} (seed {seed})"
            )
            if time.monotonic() >= next_kill:
                rng.choice(fleet.alive()).kill()
                kills += 1
                fleet.start()
                next_kill += KILL_EVERY
            time.sleep(0.05)
        seconds = time.monotonic() - began
        fleet.stop_all()

    history = load_history(db.engine)
    assert {history.instance_states[i][0] for i in ids} == {"SUCCEEDED"}
    retried = {e.instance_id for e in history.of("retry_scheduled")}
    # The flaky step fails on attempt 1 only; an attempt 1 whose worker was killed before it
    # reported is lost (its lease expired) and attempt 2 succeeds, with no retry to schedule.
    lost_first = {e.instance_id for e in history.of("lease_expired") if e.step == "flaky" and e.attempt == 1}
    expected = {ids[n] for n in range(INSTANCES) if n % flows.FLAKY_EVERY == 0} - lost_first
    assert len(expected) >= INSTANCES // flows.FLAKY_EVERY // 2, "kills took most first tries: nothing tested"
    assert expected <= retried, f"retries lost: {sorted(expected - retried)[:5]}"
    starts = {(n, pid): at for n, pid, at in ledger_times(db.engine, "narrow")}
    ends = ledger_times(db.engine, "narrow_end")
    completed = [(starts[(n, pid)], at) for n, pid, at in ends if (n, pid) in starts]
    assert len(completed) >= INSTANCES
    overlap = most_at_once(completed)
    assert overlap <= flows.NARROW_LIMIT, f"{overlap} executions at once (seed {seed})"
    assert_invariants(db.engine)
    report(
        "flow_control_chaos",
        {"workers": WORKERS, "instances": INSTANCES, "kills": kills, "samples": samples, "peak_running": peak,
         "peak_executions": overlap, "retries": len(retried), "seconds": round(seconds, 1)},
    )  # fmt: skip


def test_a_rate_limit_holds_across_four_worker_processes(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db = chaos_postgres
    count = pick(20, 60)
    ids = dispatch(db.url, flows.paced, count)
    began = time.monotonic()
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:paced", "--burst") as fleet:
        for _ in range(4):
            fleet.start()
        limit = count / flows.RATE_N * flows.RATE_PER + 60
        while fleet.alive():
            assert time.monotonic() - began < limit, fleet.logs()
            time.sleep(0.1)
        codes = [w.proc.returncode for w in fleet.started]
    seconds = time.monotonic() - began
    assert codes == [0, 0, 0, 0]
    history = load_history(db.engine)
    assert {history.instance_states[i][0] for i in ids} == {"SUCCEEDED"}
    # The window the limit counts: each claim's start as the claim recorded it (fuseline_starts,
    # kept a day). A claim's history event is written at the end of its transaction, a few ms
    # later, so windows read from events would mix two clocks.
    claimed_at = {e.instance_id: e.at for e in history.of("claimed")}
    with db.engine.connect() as conn:
        claims = sorted(aware(t) for (t,) in conn.execute(sa.select(starts.c.at)).all())
    assert len(claims) == len(list(history.of("claimed")))
    window = timedelta(seconds=flows.RATE_PER)
    busiest = max(sum(1 for t in claims if start <= t < start + window) for start in claims)
    assert busiest <= flows.RATE_N, f"{busiest} claims within {flows.RATE_PER} s"
    # The limit is on starts (claims). An execution follows its own claim by however long its
    # worker takes to call the step, which a loaded box stretches, so executions are checked
    # against their claims: each instance ran exactly once, and never before it was claimed.
    executions = ledger_times(db.engine, "paced")
    assert len(list(history.of("claimed"))) == len(executions) == count
    for n, _, at in executions:
        assert at >= claimed_at[ids[n]], f"instance {n} ran at {at}, before its claim at {claimed_at[ids[n]]}"
    assert_invariants(db.engine)
    report(
        "rate_limit", {"workers": 4, "steps": count, "seconds": round(seconds, 1), "per_second": flows.RATE_N}
    )
