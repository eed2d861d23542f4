"""Retention under load: claim latency while workers prune 100,000 old instances.

RELIABILITY item 13: 100,000 finished instances older than the retention and
8 workers draining new work while pruning runs; the claim p99 during pruning
should stay within 2x of the p99 without it. Two phases on a fresh PostgreSQL
database, each with 8 worker processes that claim (``get_step``, timed), run
a step that sleeps 5 ms (I/O-bound work) and report, while the main process
keeps a few thousand steps queued:

1. baseline: no old instances, retention off, ``--seconds`` long;
2. pruning: 100,000 finished instances (a few run for real, then copied,
   their ``finished_at`` two days back) and the workers' retention at 60 s:
   the workers delete them as they claim; the phase lasts until they are all
   gone. Only the claims made while old instances were being deleted count.

Prints both p50/p99 and the ratio, and how long pruning took; results go to
``bench/results/retention.json``.

    python bench/retention_bench.py            # 100,000 old instances, 8 workers
    python bench/retention_bench.py --quick    # 10,000 old instances, 4 workers
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuseline import FunctionStep, Status, StepReport, Workflow  # noqa: E402
from fuseline.broker import Dispatch, SqlBroker  # noqa: E402
from tests.support.copies import backdate, copy_instances  # noqa: E402

ADMIN_DSN = os.environ.get("FUSELINE_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "fuseline_retention_bench"
#: Steps kept queued (topped up every 0.2 s), so a claim always finds one.
QUEUED = 2_000
STEP_SECONDS = 0.005
RETENTION_SECONDS = 60.0


def work(x: int) -> int:
    time.sleep(STEP_SECONDS)
    return x


flow = Workflow(outputs=FunctionStep(work, name="work"), workflow_id="bench-retention", version="1")


def fresh_database() -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = ADMIN_DSN.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0] + "/" + DATABASE
    SqlBroker(url, migrate=True).close()
    return url


def worker(url: str, retention: float | None, stop: mp.Event, out: str) -> None:  # type: ignore[valid-type]
    """Claim, run, report until ``stop``; every claim's (monotonic start, seconds) to ``out``."""
    broker = SqlBroker(url, retention=retention, lease_seconds=30)
    worker_id = broker.register_worker([flow.to_schema()])
    timings = []
    while not stop.is_set():
        began = time.monotonic()
        assignment = broker.get_step(worker_id)
        timings.append((began, time.monotonic() - began))
        if assignment is None:
            time.sleep(0.01)
            continue
        result = work(**assignment.payload["workflow_inputs"])
        broker.report_step(
            worker_id,
            StepReport(
                flow.workflow_id, assignment.instance_id, assignment.step_name, Status.SUCCEEDED, result,
                assignment.attempt, version=assignment.version,
            ),
        )  # fmt: skip
    broker.deregister_worker(worker_id)
    broker.close()
    Path(out).write_text(json.dumps(timings))


def queued(url: str) -> int:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM fuseline_steps WHERE state = 'QUEUED'").fetchone()[0]


def old_left(url: str) -> int:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        sql = "SELECT count(*) FROM fuseline_instances WHERE finished_at < now() - interval '1 day'"
        return conn.execute(sql).fetchone()[0]


def phase(url: str, workers: int, retention: float | None, until, folder: Path) -> list[list[list[float]]]:
    """Run ``workers`` processes, keeping steps queued, until ``until()``; each one's claim timings."""
    broker = SqlBroker(url, retention=None)
    stop = mp.Event()
    outs = [str(folder / f"claims-{retention}-{n}.json") for n in range(workers)]
    procs = [mp.Process(target=worker, args=(url, retention, stop, out)) for out in outs]
    n = 0
    try:
        for proc in procs:
            proc.start()
        while not until():
            missing = QUEUED - queued(url)
            if missing > QUEUED // 2:
                broker.dispatch_many(flow.to_schema(), [Dispatch({"x": n + i}) for i in range(missing)])
                n += missing
            time.sleep(0.2)
    finally:
        stop.set()
        for proc in procs:
            proc.join(60)
        broker.close()
    return [json.loads(Path(out).read_text()) for out in outs]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "claims": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(0.99 * len(ordered)) - 1] * 1000, 3),
    }


def baseline(url: str, workers: int, seconds: float, folder: Path) -> dict[str, float]:
    """Claim percentiles of ``seconds`` of work without pruning (retention off)."""
    ends = time.monotonic() + seconds
    claims = phase(url, workers, None, lambda: time.monotonic() > ends, folder)
    # Only the steady state: from a second after the last worker's first claim on.
    start = max(each[0][0] for each in claims) + 1.0
    return percentiles([s for each in claims for t, s in each if t >= start])


def seed_old(url: str, count: int) -> float:
    """``count`` finished instances two days old: 100 run for real, the rest copies; seconds taken."""
    began = time.perf_counter()
    broker = SqlBroker(url, retention=None)
    try:
        worker_id = broker.register_worker([flow.to_schema()])
        seeds = broker.dispatch_many(flow.to_schema(), [Dispatch({"x": i}) for i in range(100)])
        while (a := broker.get_step(worker_id)) is not None:
            report = StepReport(flow.workflow_id, a.instance_id, a.step_name, Status.SUCCEEDED, 0, a.attempt)
            broker.report_step(worker_id, report)
        broker.deregister_worker(worker_id)
        ids = seeds + copy_instances(broker.engine, seeds, count - len(seeds))
        backdate(broker.engine, ids, days=2)
    finally:
        broker.close()
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 old instances and 4 workers")
    parser.add_argument("--seconds", type=float, default=None, help="length of the baseline phase")
    args = parser.parse_args()
    old = 10_000 if args.quick else 100_000
    workers = 4 if args.quick else 8
    baseline_seconds = args.seconds or (10.0 if args.quick else 30.0)

    url = fresh_database()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"baseline: {workers} workers, no old instances, retention off, {baseline_seconds:g} s")
        base = baseline(url, workers, baseline_seconds, folder)
        print(f"  {base}")

        seeded = seed_old(url, old)
        print(f"pruning: {old:,} finished instances two days old (written in {seeded:.1f} s), retention 60 s")
        window: dict[str, float] = {}

        def all_pruned() -> bool:
            left = old_left(url)
            now = time.monotonic()
            if left < old and "start" not in window:
                window["start"] = now - 0.2  # the first batch began at most one look ago
            if left == 0:
                window["end"] = now
                return True
            return False

        pruning = phase(url, workers, RETENTION_SECONDS, all_pruned, folder)
        during = percentiles(
            [s for each in pruning for t, s in each if window["start"] <= t <= window["end"]]
        )
        seconds = window["end"] - window["start"]
        print(f"  {during}; all pruned in {seconds:.1f} s ({old / seconds:,.0f} instances/s)")
        # The box may be busier in one phase than in another: a second baseline shows how much.
        print(f"baseline again, after pruning, {baseline_seconds:g} s")
        after = baseline(url, workers, baseline_seconds, folder)
        print(f"  {after}")

    without = (base["p99_ms"] + after["p99_ms"]) / 2
    ratio = during["p99_ms"] / without
    print(f"claim p99 during pruning / without (mean of both baselines): {ratio:.2f}x (target <= 2x)")
    results = {
        "old_instances": old,
        "workers": workers,
        "baseline": base,
        "baseline_after": after,
        "during_pruning": during,
        "prune_seconds": round(seconds, 1),
        "p99_ratio": round(ratio, 2),
    }
    target = HERE / "results" / ("retention-quick.json" if args.quick else "retention.json")
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {target.relative_to(HERE.parent)}")


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
