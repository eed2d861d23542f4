"""fuseline's side of `make bench`: drain, pickup, dispatch, growth and memory figures.

Every figure runs on a fresh PostgreSQL database (and the drain and pickup
figures on a fresh SQLite file too), prints as it goes, and ends up in
``bench/results/fuseline.json``. Worker processes run ``ProcessEngine`` the
way ``fuseline worker run`` does; they are started before the clock starts
and released together.

    python bench/fuseline_bench.py            # the full set (a few minutes)
    python bench/fuseline_bench.py --quick    # a smoke run (about 30 s)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuseline import Computed, Depends, Step, Workflow  # noqa: E402
from fuseline.broker import Dispatch, SqlBroker  # noqa: E402
from fuseline.clients import LocalBrokerClient  # noqa: E402
from fuseline.engines import ProcessEngine  # noqa: E402

ADMIN_DSN = os.environ.get("FUSELINE_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "fuseline_bench"


# -- the workloads ------------------------------------------------------------------------------
class Noop(Step):
    def run_step(self) -> None:
        return None


class Stamp(Step):
    """Records when it started: pickup latency is measured from the dispatch call."""

    def run_step(self, sent: float) -> float:
        return time.time() - sent  # wall clock on one machine: both ends read the same clock


class ChainA(Step):
    def run_step(self) -> int:
        return 1


chain_a = ChainA()


class ChainB(Step):
    def run_step(self, v: Computed[int] = Depends(chain_a)) -> int:
        return v + 1


chain_b = ChainB()


class ChainC(Step):
    def run_step(self, v: Computed[int] = Depends(chain_b)) -> int:
        return v + 1


NOOP = Workflow([Noop()], workflow_id="bench-noop", version="1")
CHAIN = Workflow([ChainC()], workflow_id="bench-chain3", version="1")
PICKUP = Workflow([Stamp()], workflow_id="bench-pickup", version="1")
WORKFLOWS = {"noop": NOOP, "chain": CHAIN, "pickup": PICKUP}


# -- databases ------------------------------------------------------------------------------------
def fresh_postgres() -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE
    SqlBroker(url, migrate=True).close()
    return url


def fresh_sqlite(folder: Path) -> str:
    path = folder / f"bench-{time.monotonic_ns()}.db"
    url = f"sqlite:///{path}"
    SqlBroker(url, migrate=True).close()
    return url


def checkpoint(url: str, *, analyze: bool = True) -> None:
    """Write back what earlier figures left dirty, and give the planner the tables' statistics
    (unless ``analyze`` is false: the figure is how a new database drains before autovacuum
    first analyzes it).

    Empty tables are not vacuumed nor analyzed: their statistics would say they stay empty,
    and plans made then (a foreign key's check among them) scan the table whole however much
    it grows until the next ANALYZE. A batch of 1,000 dispatches after 20,000 took 0.65 s
    so, 0.03 s without.
    """
    if url.startswith("postgresql"):
        with psycopg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE, autocommit=True) as conn:
            filled = conn.execute("SELECT EXISTS (SELECT 1 FROM fuseline_instances)").fetchone()
            if analyze and filled and filled[0]:
                conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")


def write_results(path: str, figures: dict[str, Any]) -> None:
    """Every benchmark's figures, as sorted JSON at ``path`` (``bench/results/<name>.json``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


# -- worker processes -----------------------------------------------------------------------------
def _worker(
    url: str, workflow: str, start: Any, ready: Any, until_idle: bool, listen: bool = True, prefetch: int = 1
) -> None:
    broker = SqlBroker(url, listen=listen)
    engine = ProcessEngine(LocalBrokerClient(broker), [WORKFLOWS[workflow]], prefetch=prefetch)
    ready.release()
    start.wait()
    keys = [(WORKFLOWS[workflow].workflow_id, "1")]
    idle = (lambda: not broker.has_running_instances(keys)) if until_idle else None
    try:
        engine.work(block=True, poll_interval=0.05, until=idle)
    finally:
        engine.close()
        broker.close()


def drain(
    url: str, workflow: str, instances: int, processes: int, prefetch: int = 1, *, analyze: bool = True
) -> dict[str, float]:
    """Dispatch ``instances`` first, then time ``processes`` workers draining them
    (each claiming ``prefetch`` steps at a time), on analyzed tables unless ``analyze`` is false."""
    wf = WORKFLOWS[workflow]
    dispatch_backlog(url, workflow, instances)
    checkpoint(url, analyze=analyze)
    seconds = run_workers(url, workflow, processes, prefetch)
    steps = instances * len(wf.steps)
    return {"seconds": round(seconds, 3), "steps_per_s": round(steps / seconds, 1)}


def drain_after_quiet_analyze(
    url: str, workflow: str, history: int, instances: int, processes: int
) -> dict[str, float]:
    """The drain of a burst on tables last analyzed while nothing was queued or running: a quiet
    deployment's usual state, as autovacuum analyzes the steps table after a drain. ``history``
    instances are run first, then the tables analyzed, then ``instances`` dispatched and drained."""
    dispatch_backlog(url, workflow, history)
    run_workers(url, workflow, processes)
    checkpoint(url)  # the ANALYZE sees an empty queue
    return drain(url, workflow, instances, processes, analyze=False)


def dispatch_backlog(url: str, workflow: str, instances: int) -> None:
    """``instances`` instances of the workflow, dispatched in batches of 1,000."""
    broker = SqlBroker(url)
    try:
        for offset in range(0, instances, 1000):
            schema = WORKFLOWS[workflow].to_schema()
            broker.dispatch_many(schema, [{} for _ in range(min(1000, instances - offset))])
    finally:
        broker.close()


def run_workers(url: str, workflow: str, processes: int, prefetch: int = 1) -> float:
    """Seconds ``processes`` worker processes take to drain what is queued; fails unless all is done."""
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    procs = [
        context.Process(target=_worker, args=(url, workflow, start, ready, True, True, prefetch))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    began = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - began
    check = SqlBroker(url)
    try:
        left = check.has_running_instances()
    finally:
        check.close()
    if left or any(p.exitcode for p in procs):
        raise RuntimeError(f"drain of {workflow} did not finish cleanly")
    return seconds


def p50_p99(values: list[float], digits: int = 2) -> tuple[float, float]:
    """The median of ``values`` and their 99th percentile (the sample 99 % of them reach)."""
    ordered = sorted(values)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return round(statistics.median(ordered), digits), round(p99, digits)


def pickup(url: str, samples: int, *, listen: bool = True) -> dict[str, float]:
    """An idle worker; instances dispatched one at a time 30-70 ms apart; first 10 dropped.

    ``listen=False`` shows what polling alone gives (the worker polls every 0.05 s).
    """
    checkpoint(url)  # the write-back of earlier figures must not stall these commits
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    proc = context.Process(target=_worker, args=(url, "pickup", start, ready, False, listen))
    proc.start()
    ready.acquire()
    start.set()
    time.sleep(1.0)  # let it settle into waiting
    broker = SqlBroker(url)
    ids, commits = [], []
    try:
        for n in range(samples + 10):
            sent = time.time()
            ids.append(PICKUP.dispatch(broker, {"sent": sent}))
            commits.append((time.time() - sent) * 1000)
            time.sleep(0.03 + (n % 5) * 0.01)
        deadline = time.monotonic() + 30
        while broker.has_running_instances() and time.monotonic() < deadline:
            time.sleep(0.05)
        measured = [broker.get_instance(i).result * 1000 for i in ids[10:]]
    finally:
        broker.close()
        proc.terminate()
        proc.join(10)
    p50, p99 = p50_p99(measured)
    # The same pickups split at the moment the dispatch call returned (its commit acknowledged):
    # the dispatch itself, and what the worker adds (wake-up, claim, start of the step).
    after_p50, after_p99 = p50_p99([max(0.0, t - c) for t, c in zip(measured, commits[10:], strict=True)])
    return {
        "p50_ms": p50,
        "p99_ms": p99,
        "dispatch_call_p50_ms": round(statistics.median(commits[10:]), 2),
        "after_commit_p50_ms": after_p50,
        "after_commit_p99_ms": after_p99,
    }


def dispatch_rates(url: str, one_by_one: int, batched: int) -> dict[str, float]:
    # The first figure of `make bench`, right after the peers: without a checkpoint it pays for
    # flushing their dirty pages (0.5x in two runs out of three).
    checkpoint(url)
    broker = SqlBroker(url)
    try:
        schema = NOOP.to_schema()
        broker.register_workflows([schema])
        began = time.perf_counter()
        for _ in range(one_by_one):
            broker.dispatch_workflow(schema, {})
        one = one_by_one / (time.perf_counter() - began)
        began = time.perf_counter()
        for offset in range(0, batched, 1000):
            broker.dispatch_many(schema, [{} for _ in range(min(1000, batched - offset))])
        many = batched / (time.perf_counter() - began)
    finally:
        broker.close()
    return {"one_by_one_per_s": round(one, 1), "batched_per_s": round(many, 1)}


def _add_history(url: str, first: int, last: int) -> None:
    """Finished step rows ``first..last`` of one finished instance (the history a broker accumulates)."""
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        if first == 1:
            conn.execute(
                "INSERT INTO fuseline_workflows (workflow_id, version, schema_hash, definition)"
                " VALUES ('bench-history', '1', 'x', '{}') ON CONFLICT DO NOTHING"
            )
            conn.execute(
                "INSERT INTO fuseline_instances (id, workflow_id, version, status, inputs, created_at,"
                " updated_at, finished_at) VALUES ('00000000-0000-7000-8000-000000000001', 'bench-history',"
                " '1', 'SUCCEEDED', '{}', now(), now(), now())"
            )
        conn.execute(
            "INSERT INTO fuseline_steps (instance_id, workflow_id, version, name, state, attempt,"
            " max_attempts, result, started_at, finished_at)"
            " SELECT '00000000-0000-7000-8000-000000000001', 'bench-noop', '1', 'done_' || g, 'SUCCEEDED',"
            " 1, 3, 'null', now(), now() FROM generate_series(%s::int, %s::int) g",
            (first, last),
        )
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def _claim_report_ms(url: str, steps: int) -> float:
    broker = SqlBroker(url)
    try:
        broker.dispatch_many(NOOP.to_schema(), [{} for _ in range(steps)])
        # Fresh statistics in both cases, as autovacuum keeps them on a live database:
        # what is compared is the history, not how stale the planner's picture is.
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute("ANALYZE fuseline_steps, fuseline_instances, fuseline_events")
        engine = ProcessEngine(LocalBrokerClient(broker), [NOOP])
        began = time.perf_counter()
        engine.work()
        elapsed = time.perf_counter() - began
        engine.close()
    finally:
        broker.close()
    return 1000 * elapsed / steps


def claim_report_cost(url: str, history: int, steps: int, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per claim+report with 1,000 and then ``history`` finished step rows (medians)."""
    _add_history(url, 1, 1_000)
    _claim_report_ms(url, steps)  # warm-up: connections, prepared statements
    small = statistics.median(_claim_report_ms(url, steps) for _ in range(rounds))
    _add_history(url, 1_001, history)
    large = statistics.median(_claim_report_ms(url, steps) for _ in range(rounds))
    return {
        "history_1k": round(small, 3),
        f"history_{history}": round(large, 3),
        "ratio": round(large / small, 2),
    }


#: The priorities of the queued backlog in the priority figures: most at the default.
MIXED_PRIORITIES = (-5, 0, 0, 0, 0, 3, 10)


def _queue_mixed(url: str, count: int) -> None:
    broker = SqlBroker(url)
    try:
        for offset in range(0, count, 1000):
            batch = [Dispatch({}, priority=MIXED_PRIORITIES[(offset + n) % len(MIXED_PRIORITIES)])
                     for n in range(min(1000, count - offset))]  # fmt: skip
            broker.dispatch_many(NOOP.to_schema(), batch)
    finally:
        broker.close()
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _claims_ms(url: str, steps: int) -> float:
    """Milliseconds per claim+report of ``steps`` steps taken from the queued backlog."""
    broker = SqlBroker(url)
    try:
        engine = ProcessEngine(LocalBrokerClient(broker), [NOOP])
        began = time.perf_counter()
        engine.work(max_steps=steps)
        elapsed = time.perf_counter() - began
        engine.close()
    finally:
        broker.close()
    return 1000 * elapsed / steps


def claim_cost_with_priorities(url: str, history: int, queued: int, steps: int, rounds: int = 3) -> dict:
    """Milliseconds per claim+report with 1,000 finished rows and 1,000 queued at mixed priorities,
    then with ``history`` finished and ``queued`` queued (medians of ``rounds``)."""
    _add_history(url, 1, 1_000)
    _queue_mixed(url, 1_000 + steps * (rounds + 1))
    _claims_ms(url, steps)  # warm-up
    small = statistics.median(_claims_ms(url, steps) for _ in range(rounds))
    _add_history(url, 1_001, history)
    _queue_mixed(url, queued)
    large = statistics.median(_claims_ms(url, steps) for _ in range(rounds))
    return {
        "finished_1k_queued_1k": round(small, 3),
        f"finished_{history}_queued_{queued}": round(large, 3),
        "ratio": round(large / small, 2),
    }


def worker_memory(url: str, steps: int) -> dict[str, float]:
    """RSS (MB) of one `fuseline worker run` process, idle and then draining ``steps`` steps."""
    env = {**os.environ, "FUSELINE_DATABASE_URL": url, "PYTHONPATH": str(HERE)}
    fuseline = str(Path(sys.executable).parent / "fuseline")
    worker = subprocess.Popen(
        [
            fuseline,
            "worker",
            "run",
            "fuseline_bench:NOOP",
            "--log-level",
            "WARNING",
            "--poll-interval",
            "0.05",
        ],
        env=env,
        cwd=HERE,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3.0)
        idle = _rss_mb(worker.pid)
        broker = SqlBroker(url)
        peak = idle
        try:
            broker.dispatch_many(NOOP.to_schema(), [{} for _ in range(steps)])
            deadline = time.monotonic() + 120
            while broker.has_running_instances() and time.monotonic() < deadline:
                peak = max(peak, _rss_mb(worker.pid))
                time.sleep(0.1)
        finally:
            broker.close()
    finally:
        worker.terminate()
        worker.wait(30)
    return {"idle_mb": round(idle, 1), "busy_mb": round(peak, 1)}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- the run ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", default=str(HERE / "results" / "fuseline.json"))
    parser.add_argument("--only", default="", help="comma-separated figure names (prefixes): just these")
    args = parser.parse_args()
    only = [name for name in args.only.split(",") if name]
    q = args.quick
    sizes = {
        "noop": 1000 if q else 10_000,
        # Few enough that the planner's guess for tables never analyzed is a few hundred rows.
        "unanalyzed": 1000 if q else 5_000,
        "quiet_history": 200 if q else 2_000,
        "chains": 200 if q else 2_000,
        "pickup": 40 if q else 200,
        "one_by_one": 300 if q else 3_000,
        "batched": 2_000 if q else 20_000,
        "history": 20_000 if q else 1_000_000,
        "queued": 10_000 if q else 100_000,
        "cost_steps": 300 if q else 2_000,
        "memory_steps": 500 if q else 3_000,
        "sqlite_noop": 500 if q else 3_000,
        "sqlite_chains": 100 if q else 500,
    }
    figures: dict[str, Any] = {"sizes": sizes}

    def record(name: str, measure: Callable[[], Any]) -> None:
        if only and not any(name.startswith(prefix) for prefix in only):
            return
        began = time.perf_counter()
        value = measure()
        figures[name] = value
        print(f"{name:<34} {json.dumps(value)}  ({time.perf_counter() - began:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory(prefix="fuseline-bench-") as folder:
        pg = fresh_postgres
        record("pg_dispatch", lambda: dispatch_rates(pg(), sizes["one_by_one"], sizes["batched"]))
        for c in (1, 4):
            record(f"pg_drain_noop_c{c}", lambda c=c: drain(pg(), "noop", sizes["noop"], c))
            record(f"pg_drain_chain3_c{c}", lambda c=c: drain(pg(), "chain", sizes["chains"], c))
        # Prefetching workers (`fuseline worker run --prefetch 10`), like pgqueuer's batch of 10.
        for c in (1, 4):
            record(f"pg_drain_noop_prefetch10_c{c}", lambda c=c: drain(pg(), "noop", sizes["noop"], c, 10))
        record("pg_drain_chain3_prefetch10_c4", lambda: drain(pg(), "chain", sizes["chains"], 4, 10))
        # A new database before autovacuum first analyzes it (up to a minute after a burst).
        record(
            "pg_drain_noop_unanalyzed_c4",
            lambda: drain(pg(), "noop", sizes["unanalyzed"], 4, analyze=False),
        )
        # A burst on tables analyzed while the queue was empty (a deployment after a quiet spell).
        record(
            "pg_drain_noop_stale_c4",
            lambda: drain_after_quiet_analyze(pg(), "noop", sizes["quiet_history"], sizes["noop"], 4),
        )
        record("pg_pickup", lambda: pickup(pg(), sizes["pickup"]))
        record("pg_pickup_no_listen", lambda: pickup(pg(), max(20, sizes["pickup"] // 4), listen=False))
        record("pg_claim_report_ms", lambda: claim_report_cost(pg(), sizes["history"], sizes["cost_steps"]))
        record(
            "pg_claim_priorities_ms",
            lambda: claim_cost_with_priorities(pg(), sizes["history"], sizes["queued"], sizes["cost_steps"]),
        )
        record("worker_rss", lambda: worker_memory(pg(), sizes["memory_steps"]))
        lite = lambda: fresh_sqlite(Path(folder))  # noqa: E731
        for c in (1, 4):
            record(f"sqlite_drain_noop_c{c}", lambda c=c: drain(lite(), "noop", sizes["sqlite_noop"], c))
            record(f"sqlite_drain_chain3_c{c}", lambda c=c: drain(lite(), "chain", sizes["sqlite_chains"], c))
        record("sqlite_pickup", lambda: pickup(lite(), max(20, sizes["pickup"] // 4)))
    write_results(args.out, figures)


if __name__ == "__main__":
    main()
