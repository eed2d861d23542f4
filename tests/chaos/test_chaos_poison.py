"""Poison step (RELIABILITY item 10): a step that SIGKILLs its own worker, again and again.

Two runs of the same healthy load (single-step ``poison`` instances that
sleep a few ms) on four real workers, each on a fresh database: a baseline,
then the same load plus one instance whose step kills its worker
(``os.kill(os.getpid(), SIGKILL)``). A supervisor starts a replacement as
soon as a worker dies. Pass: the poison step is claimed exactly 3 times
(the default attempt limit), killing exactly 3 workers, then FAILED with
"worker lost" and its instance FAILED; every healthy instance SUCCEEDED;
the healthy throughput (instances per second from the first claim to the
last healthy finish, database clock) keeps at least 90% of the baseline's.

Both rates are measured in the same test, seconds apart; what the poison
costs is three worker restarts (each a fresh Python process, about 0.6 s
here), some 4% of a run. Other sessions on this shared 2-core box swing
one run against the other by up to about 8%, so a pair that misses the
bar is measured once more and the better pair counts: a real regression
(a poison step hammering the queue, workers not replaced) misses it twice,
and every correctness check applies to both pairs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.reports import WORKER_LOST
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase, _test_engine, migrated_postgres
from tests.chaos.history import assert_invariants, load_history
from tests.chaos.scale import POISON, POISON_MIN_RATIO, pick, report
from tests.chaos.workers import Workers
from tests.conftest import url_text
from tests.support.databases import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.serial]

RUN_LIMIT_SECONDS = pick(120.0, 600.0)
#: Pairs of runs (baseline, with poison) measured at most, if the first misses the bar.
ATTEMPTS = 2


@dataclass
class Run:
    healthy_ids: list[str]
    poison_id: str | None
    deaths: int
    rate: float
    seconds: float
    db: ChaosDatabase


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> Iterator[Callable[[], ChaosDatabase]]:
    created = []

    def make() -> ChaosDatabase:
        url = migrated_postgres(postgres_server)
        created.append((url, ChaosDatabase(url_text(url), _test_engine(url))))
        return created[-1][1]

    try:
        yield make
    finally:
        for url, db in created:
            db.engine.dispose()
            postgres_server.drop_database(url)


def running_instances(db: ChaosDatabase) -> int:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(instances).where(instances.c.status == "RUNNING")
        ).scalar_one()


def run_load(db: ChaosDatabase, folder: Path, with_poison: bool) -> Run:
    cfg = POISON
    options = ("--lease-seconds", str(cfg.lease_seconds))
    with Workers(folder, db.url, "tests.chaos.flows:poison", *options) as fleet:
        for _ in range(cfg.workers):
            fleet.start()
        for worker in fleet.started:
            worker.wait_for_log("started (pid")
        broker = SqlBroker(db.url)
        try:
            schema = flows.poison.to_schema()
            poison_id = broker.dispatch_workflow(schema, {"n": -1, "poison": True}) if with_poison else None
            healthy = broker.dispatch_many(
                schema, [{"n": n, "pause": cfg.pause} for n in range(cfg.instances)]
            )
        finally:
            broker.close()
        deaths = 0
        began = time.monotonic()
        next_count = began
        while True:
            # A cheap count, a few times a second: the watcher must not take the CPU the
            # workers are measured on, nor delay a replacement while it reads.
            if time.monotonic() >= next_count:
                if running_instances(db) == 0:
                    break
                next_count = time.monotonic() + 0.25
            assert time.monotonic() - began < RUN_LIMIT_SECONDS, fleet.logs(fleet.alive())
            for worker in fleet.started:
                if not worker.killed and not worker.alive():
                    assert worker.proc.returncode == -9, fleet.logs([worker])
                    worker.killed = True
                    deaths += 1
                    fleet.start()
            time.sleep(0.02)
        codes = fleet.stop_all()
        assert set(codes.values()) <= {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
    history = load_history(db.engine, ledger=False)
    ids = set(healthy)
    first_claim = min(e.at for e in history.of("claimed") if e.instance_id in ids)
    last_finish = max(e.at for e in history.of("instance_succeeded") if e.instance_id in ids)
    seconds = (last_finish - first_claim).total_seconds()
    return Run(healthy, poison_id, deaths, len(healthy) / seconds, seconds, db)


@pytest.mark.timeout(ATTEMPTS * 2 * RUN_LIMIT_SECONDS + 120)
def test_poison_step_fails_after_three_claims_and_others_keep_their_throughput(
    fresh_database: Callable[[], ChaosDatabase], tmp_path: Path
) -> None:
    ratios = []
    for attempt in range(1, ATTEMPTS + 1):
        baseline = run_load(fresh_database(), tmp_path / f"baseline-{attempt}", with_poison=False)
        poisoned = run_load(fresh_database(), tmp_path / f"poisoned-{attempt}", with_poison=True)
        check_poison(baseline, poisoned)
        ratios.append((poisoned.rate / baseline.rate, baseline, poisoned))
        if ratios[-1][0] >= POISON_MIN_RATIO:
            break
    ratio, baseline, poisoned = max(ratios, key=lambda measured: measured[0])
    report(
        "poison",
        {
            "workers": POISON.workers,
            "healthy_instances": POISON.instances,
            "lease_seconds": POISON.lease_seconds,
            "poison_claims": 3,
            "workers_killed_by_poison": poisoned.deaths,
            "baseline_per_second": round(baseline.rate, 1),
            "with_poison_per_second": round(poisoned.rate, 1),
            "throughput_ratio": round(ratio, 3),
            "ratios_measured": [round(r, 3) for r, _, _ in ratios],
        },
    )
    assert ratio >= POISON_MIN_RATIO, (
        f"healthy throughput with the poison step is {ratio:.1%} of the baseline "
        f"({poisoned.rate:.1f}/s vs {baseline.rate:.1f}/s; every pair: {[round(r, 3) for r, _, _ in ratios]})"
    )


def check_poison(baseline: Run, poisoned: Run) -> None:
    assert baseline.deaths == 0
    assert poisoned.deaths == 3, f"{poisoned.deaths} workers died"
    history = load_history(poisoned.db.engine, ledger=False)
    for run in (baseline, poisoned):
        states = load_history(run.db.engine, ledger=False).instance_states
        assert {states[i][0] for i in run.healthy_ids} == {"SUCCEEDED"}
    assert history.instance_states[poisoned.poison_id][0] == "FAILED"  # type: ignore[index]
    of_poison = [e for e in history.events if e.instance_id == poisoned.poison_id]
    claims = [(e.attempt, e.worker_id) for e in of_poison if e.kind == "claimed"]
    assert [attempt for attempt, _ in claims] == [1, 2, 3], claims
    assert len({worker for _, worker in claims}) == 3, "one worker claimed the poison twice"
    assert [e.attempt for e in of_poison if e.kind == "lease_expired"] == [1, 2, 3]
    assert [e.attempt for e in of_poison if e.kind == "failed"] == [3]
    step_state, step_attempt = history.step_states[(poisoned.poison_id, "work")]  # type: ignore[index]
    assert (step_state, step_attempt) == ("FAILED", 3)
    with poisoned.db.engine.connect() as conn:
        error = conn.exec_driver_sql(
            "SELECT error FROM fuseline_steps WHERE instance_id = %(i)s", {"i": poisoned.poison_id}
        ).scalar_one()
        instance_error = conn.exec_driver_sql(
            "SELECT error FROM fuseline_instances WHERE id = %(i)s", {"i": poisoned.poison_id}
        ).scalar_one()
    assert error == WORKER_LOST and "worker lost" in error
    assert "worker lost" in instance_error
    for run in (baseline, poisoned):
        assert_invariants(run.db.engine)
