"""Worker OS processes drain diamonds (A -> {B, C} -> D) on one database, each step exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuseline.broker.sql import SqlBroker
from tests.sql.invariants import assert_instances_succeeded, assert_nothing_running, assert_ran_exactly_once
from tests.sql.processes import RunWorkers, dialect_of
from tests.sql.workflows import diamond, diamond_result

pytestmark = pytest.mark.slow

DIAMOND_STEPS = ("a", "b", "c", "d")


def drain_diamonds(
    url: str, broker: SqlBroker, run_workers: RunWorkers, ledger: Path, instances: int, workers: int
) -> tuple[set[int], float]:
    """Dispatch, drain with worker processes, check it all; returns the pids that ran steps, and seconds."""
    inputs = [{"log": str(ledger), "n": n} for n in range(instances)]
    ids = broker.dispatch_many(diamond.to_schema(), inputs)

    run = run_workers(url, ["diamond"], count=workers)

    run.check_clean_exit()
    assert_instances_succeeded(broker, {i: diamond_result(n) for n, i in enumerate(ids)})
    assert_nothing_running(broker)
    rows = assert_ran_exactly_once(ledger, ids, DIAMOND_STEPS)
    assert sum(w.ran or 0 for w in run.workers) == len(DIAMOND_STEPS) * instances
    pids = {pid for *_, pid in rows}
    assert pids <= {w.pid for w in run.workers}
    return pids, run.seconds


def test_four_worker_processes_drain_diamonds_running_each_step_once(
    db_url: str, broker: SqlBroker, run_workers: RunWorkers, tmp_path: Path, record_property
) -> None:
    dialect = dialect_of(db_url)
    instances = 200 if dialect == "postgres" else 60

    pids, seconds = drain_diamonds(db_url, broker, run_workers, tmp_path / "ledger", instances, workers=4)

    assert len(pids) > 1, "one process ran every step: the work was not shared"
    steps = len(DIAMOND_STEPS) * instances
    record_property("drain", f"{dialect}: {instances} instances, {steps} steps, {seconds:.2f} s")
    print(f"\n[sql drain] {dialect}: {instances} instances, {steps} steps, 4 workers, {seconds:.2f} s")


def test_three_processes_share_one_sqlite_file_without_lock_errors(
    sqlite_url: str, run_workers: RunWorkers, tmp_path: Path
) -> None:
    broker = SqlBroker(sqlite_url, migrate=True)
    try:
        pids, _ = drain_diamonds(sqlite_url, broker, run_workers, tmp_path / "ledger", 30, workers=3)
    finally:
        broker.close()
    assert len(pids) > 1
