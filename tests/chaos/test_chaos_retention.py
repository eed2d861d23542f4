"""Chaos (issue 13): retention while workers drain new work (RELIABILITY item 13, scaled down).

Thousands of finished instances older than the retention (a few real
diamonds, copied) and old unfinished ones (delayed far into the future) are
in the tables when worker processes with ``--retention 60s`` start and new
diamonds are dispatched in waves. The workers prune as they claim. Pass: no
deadlock (PostgreSQL's own count stays where it was, no worker logs one),
every new diamond succeeds with each step accepted once, every old finished
instance is gone with all its rows, nothing unfinished is touched, the
tables hold exactly the rows of what is left, and ``verify()`` is clean.

Scaled (``make test``): 4 workers, 3,000 old instances, 200 new on
PostgreSQL; 2 workers, 600 and 60 on SQLite. Full (``make chaos``): 8
workers, 100,000 old and 2,000 new on PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import events, instances, signals, steps
from fuseline.broker.sql.verify import verify
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import assert_each_step_accepted_once, load_history
from tests.chaos.scale import pick, report
from tests.chaos.workers import Workers, wait_for
from tests.support.copies import backdate, copy_instances

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class RetentionChaos:
    workers: int
    #: Finished instances older than the retention (``seeds`` run for real, the rest copies).
    old: int
    seeds: int
    #: Diamonds dispatched while the workers prune, in ``waves``.
    new: int
    waves: int
    #: Old unfinished instances: delayed for an hour, so no worker runs them during the test.
    waiting: int = 20


POSTGRES = RetentionChaos(
    workers=pick(4, 8), old=pick(3_000, 100_000), seeds=50, new=pick(200, 2_000), waves=5
)
SQLITE = RetentionChaos(workers=2, old=pick(600, 3_000), seeds=30, new=pick(60, 200), waves=3)
#: How long the workers may take to prune everything and drain the new work.
DEADLINE = pick(240.0, 900.0)


def dispatch(db: ChaosDatabase, first: int, count: int, **options: object) -> list[str]:
    broker = SqlBroker(db.url)
    try:
        return [
            flows.diamond.dispatch(broker, {"n": n, "pause": 0.001}, **options)
            for n in range(first, first + count)
        ]
    finally:
        broker.close()


def count(engine: sa.Engine, table: sa.Table, where: sa.ColumnElement | None = None) -> int:
    statement = sa.select(sa.func.count()).select_from(table)
    with engine.connect() as conn:
        return conn.execute(statement if where is None else statement.where(where)).scalar_one()


def deadlocks(db: ChaosDatabase) -> int:
    if db.dialect != "postgresql":
        return 0
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()


def run(db: ChaosDatabase, cfg: RetentionChaos, folder: Path) -> None:
    # The old finished instances: a few real diamonds, run to the end, then copied.
    seeds = dispatch(db, 0, cfg.seeds)
    with Workers(
        folder / "seeding", db.url, "tests.chaos.flows:diamond", "--retention", "0", "--burst"
    ) as seeding:
        seeding.start()
        wait_for(lambda: not seeding.alive(), 120, "the seeds to finish")
    old = seeds + copy_instances(db.engine, seeds, cfg.old - cfg.seeds)
    backdate(db.engine, old, days=2)
    waiting = dispatch(db, 10_000_000, cfg.waiting, delay=3600)
    backdate(db.engine, waiting, days=2, column="created_at")  # old too, but unfinished
    deadlocks_before = deadlocks(db)

    new: list[str] = []
    # A short lease: heartbeats every second race reports, claims and pruning all along.
    options = ("--retention", "60s", "--lease-seconds", "3", "--poll-interval", "0.05")
    began = time.monotonic()
    with Workers(folder / "workers", db.url, "tests.chaos.flows:diamond", *options) as fleet:
        for _ in range(cfg.workers):
            fleet.start()
        for worker in fleet.started:
            worker.wait_for_log("started (pid")
        per_wave = cfg.new // cfg.waves
        for wave in range(cfg.waves):
            new += dispatch(db, 1_000 + wave * per_wave, per_wave)
            broken = fleet.unexpected_exits()
            assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
            time.sleep(0.5)

        def done() -> bool:
            broken = fleet.unexpected_exits()
            assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
            finished = count(
                db.engine, instances, instances.c.id.in_(new) & (instances.c.status != "RUNNING")
            )
            return finished == len(new) and count(db.engine, instances, instances.c.id.in_(old[:1000])) == 0

        wait_for(done, DEADLINE, "the new work drained and the old instances pruned", interval=0.5)
        wait_for(
            lambda: count(db.engine, instances) == len(new) + len(waiting),
            DEADLINE,
            "every old instance pruned",
            interval=0.5,
        )
        elapsed = time.monotonic() - began
        logs = fleet.logs()
        codes = fleet.stop_all()
    assert set(codes.values()) <= {0}, logs
    # Pruning never deadlocks: a batch that lost one would say "retention: pruning put off".
    put_off = [line for line in logs.splitlines() if "retention:" in line and "put off" in line]
    assert put_off == [], "\n".join(put_off)
    deadlocked = [line for line in logs.splitlines() if "deadlock" in line.lower()]
    assert deadlocked == [], "\n".join(deadlocked[:10])
    assert deadlocks(db) == deadlocks_before, "PostgreSQL counted a deadlock in this database"

    history = load_history(db.engine, ledger=False)
    assert_each_step_accepted_once(history, new, flows.DIAMOND_STEPS)
    with db.engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(instances.c.id, instances.c.status)).all())
    assert {statuses[i] for i in new} == {Status.SUCCEEDED.value}
    assert {statuses[i] for i in waiting} == {Status.RUNNING.value}
    kept = [*new, *waiting]
    assert count(db.engine, instances) == len(kept)
    assert count(db.engine, steps) == 4 * len(kept)
    assert count(db.engine, events) == count(db.engine, events, events.c.instance_id.in_(kept))
    assert count(db.engine, signals) == 0
    violations = [str(v) for v in verify(db.engine)]
    assert violations == [], "\n".join(violations[:20])
    report(
        f"retention_{db.dialect}",
        {
            "workers": cfg.workers,
            "old_pruned": len(old),
            "new_drained": len(new),
            "seconds": elapsed,
            "deadlocks": deadlocks(db) - deadlocks_before,
        },
    )


def test_retention_prunes_old_instances_while_workers_drain_new_work_postgres(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    run(chaos_postgres, POSTGRES, tmp_path)


def test_retention_prunes_old_instances_while_workers_drain_new_work_sqlite(
    chaos_sqlite: ChaosDatabase, tmp_path: Path
) -> None:
    run(chaos_sqlite, SQLITE, tmp_path)
