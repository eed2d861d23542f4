"""A Map over N items against N separately dispatched instances, on PostgreSQL.

(a) one instance of ``rows(n) -> Map(work, over=rows) -> total``: the clock runs
    from the dispatch call until the instance is SUCCEEDED (the workers, idle,
    exit); then the result is checked, and that there are exactly ``n`` item
    rows, each with exactly one ``succeeded`` event.
(b) ``n`` instances of the one-step workflow ``work(item)``, dispatched with
    ``dispatch_many`` (batches of 1,000) once the clock runs, until all are
    SUCCEEDED; every result checked, every step succeeded exactly once.

``work(item)`` is a no-op returning ``item * 2``. Each figure runs on a fresh
database; the worker processes run ``ProcessEngine`` the way ``fuseline worker
run`` does, are started before the clock and released together once the
dispatch call has returned (the dispatch is inside the clock). The pair is
measured again with ``ProcessEngine(prefetch=10)`` (``--prefetch 10``), and with
one worker (whether more workers speed the map's items up at all).

    python bench/map_bench.py              # 10,000 items, 4 workers (about 2 minutes)
    python bench/map_bench.py --repeat 3   # three runs, medians (what results/map.json holds)
    python bench/map_bench.py --quick      # 1,000 items
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuseline import Depends, FunctionStep, Map, Workflow  # noqa: E402
from fuseline.broker import SqlBroker  # noqa: E402
from fuseline.clients import LocalBrokerClient  # noqa: E402
from fuseline.engines import ProcessEngine  # noqa: E402
from fuseline.states import Status  # noqa: E402

ADMIN_DSN = os.environ.get("FUSELINE_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Not fuseline_bench's database: the two scripts may run on the same server.
DATABASE = "fuseline_map_bench"


# -- the workloads ------------------------------------------------------------------------------
def rows(n: int) -> list[int]:
    return list(range(n))


def work(item: int) -> int:
    return item * 2


rows_step = FunctionStep(rows, name="rows")
mapped = Map(FunctionStep(work, name="work"), over=rows_step, max_items=1_000_000, name="work")


def total(values: list[int] = Depends(mapped)) -> dict[str, Any]:
    return {
        "count": len(values),
        "sum": sum(values),
        "in_order": values == [2 * i for i in range(len(values))],
    }


MAPPED = Workflow(outputs=[FunctionStep(total, name="total")], workflow_id="bench-map", version="1")
SEPARATE = Workflow([FunctionStep(work, name="work")], workflow_id="bench-map-separate", version="1")
WORKFLOWS = {"map": MAPPED, "separate": SEPARATE}


# -- databases ------------------------------------------------------------------------------------
def database_url() -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE


def fresh_postgres() -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = database_url()
    SqlBroker(url, migrate=True).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    return url


# -- worker processes -----------------------------------------------------------------------------
def _worker(url: str, workflow: str, start: Any, ready: Any, prefetch: int) -> None:
    broker = SqlBroker(url)
    wf = WORKFLOWS[workflow]
    engine = ProcessEngine(LocalBrokerClient(broker), [wf], prefetch=prefetch)
    ready.release()
    start.wait()
    keys = [(wf.workflow_id, wf.version)]
    try:
        engine.work(block=True, poll_interval=0.05, until=lambda: not broker.has_running_instances(keys))
    finally:
        engine.close()
        broker.close()


def _timed(url: str, workflow: str, processes: int, prefetch: int, dispatch: Any) -> tuple[Any, float, float]:
    """Start the workers, start the clock, ``dispatch()``, release the workers, wait for them
    to find nothing running. Returns what dispatch returned, the seconds in all and the
    seconds of the dispatch call."""
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    procs = [
        context.Process(target=_worker, args=(url, workflow, start, ready, prefetch))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    began = time.perf_counter()
    dispatched = dispatch()
    dispatch_seconds = time.perf_counter() - began
    start.set()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - began
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a worker of {workflow} exited {[p.exitcode for p in procs]}")
    return dispatched, seconds, dispatch_seconds


def one_map(n: int, processes: int, prefetch: int) -> dict[str, Any]:
    url = fresh_postgres()
    broker = SqlBroker(url)
    broker.register_workflows([MAPPED.to_schema()])
    try:
        instance_id, seconds, dispatch_seconds = _timed(
            url, "map", processes, prefetch, lambda: MAPPED.dispatch(broker, {"n": n})
        )
        info = broker.get_instance(instance_id)
    finally:
        broker.close()
    expected = {"count": n, "sum": n * (n - 1), "in_order": True}
    if info.status is not Status.SUCCEEDED or info.result != expected:
        raise RuntimeError(f"map instance {info.status}: {info.result!r}, expected {expected!r}")
    with psycopg.connect(url, autocommit=True) as conn:
        items = conn.execute(
            "SELECT count(*), count(DISTINCT name), min(item_index), max(item_index),"
            " count(*) FILTER (WHERE state = 'SUCCEEDED' AND result::bigint = 2 * item_index)"
            " FROM fuseline_steps WHERE instance_id = %s AND item_of = 'work'",
            (instance_id,),
        ).fetchone()
        events = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE c = 1), count(*) FILTER (WHERE c > 1) FROM"
            " (SELECT step_name, count(*) AS c FROM fuseline_events WHERE instance_id = %s"
            "  AND kind = 'succeeded' AND step_name LIKE 'work[%%]' GROUP BY step_name) per_item",
            (instance_id,),
        ).fetchone()
        lifetime = conn.execute(
            "SELECT extract(epoch FROM finished_at - created_at) FROM fuseline_instances WHERE id = %s",
            (instance_id,),
        ).fetchone()[0]
        # Where the time went, from the rows' own clocks (clock_timestamp() of the statements):
        # the fan-out is the report transaction of ``rows`` (from its step row's update, the
        # first statement after the instance lock, to the first item claimed after the commit);
        # the items' drain runs from that first claim to the last item's success.
        fan_out, drain_items = conn.execute(
            "SELECT extract(epoch FROM (SELECT min(at) FROM fuseline_events WHERE instance_id = %(i)s"
            "   AND kind = 'claimed' AND step_name LIKE 'work[%%]')"
            " - (SELECT finished_at FROM fuseline_steps WHERE instance_id = %(i)s AND name = 'rows')),"
            " extract(epoch FROM (SELECT max(at) - min(at) FILTER (WHERE kind = 'claimed')"
            "   FROM fuseline_events WHERE instance_id = %(i)s AND step_name LIKE 'work[%%]'"
            "   AND kind IN ('claimed', 'succeeded')))",
            {"i": instance_id},
        ).fetchone()
    if tuple(items) != (n, n, 0, n - 1, n):
        raise RuntimeError(f"item rows (count, distinct, min, max, succeeded right) = {tuple(items)}")
    if tuple(events) != (n, n, 0):
        raise RuntimeError(f"succeeded events per item (items, once, more than once) = {tuple(events)}")
    steps = n + 2  # the items, rows and total (the Map step itself is the broker's)
    return {
        "seconds": round(seconds, 3),
        "steps_per_s": round(steps / seconds, 1),
        "dispatch_seconds": round(dispatch_seconds, 4),
        "instance_seconds": round(float(lifetime), 3),
        "fan_out_seconds": round(float(fan_out), 3),
        "items_drain_seconds": round(float(drain_items), 3),
        "checked": {"item_rows": items[0], "items_succeeded_once": events[1]},
    }


def separate(n: int, processes: int, prefetch: int) -> dict[str, Any]:
    url = fresh_postgres()
    broker = SqlBroker(url)
    schema = SEPARATE.to_schema()
    broker.register_workflows([schema])

    def dispatch() -> list[str]:
        ids: list[str] = []
        for offset in range(0, n, 1000):
            ids += broker.dispatch_many(schema, [{"item": i} for i in range(offset, min(n, offset + 1000))])
        return ids

    try:
        ids, seconds, dispatch_seconds = _timed(url, "separate", processes, prefetch, dispatch)
    finally:
        broker.close()
    with psycopg.connect(url, autocommit=True) as conn:
        done = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE i.status = 'SUCCEEDED' AND s.state = 'SUCCEEDED'"
            " AND s.result::bigint = 2 * (i.inputs::json ->> 'item')::bigint)"
            " FROM fuseline_instances i JOIN fuseline_steps s ON s.instance_id = i.id",
        ).fetchone()
        events = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE c = 1) FROM (SELECT instance_id, count(*) AS c"
            " FROM fuseline_events WHERE kind = 'succeeded' AND step_name = 'work' GROUP BY instance_id) e"
        ).fetchone()
    if len(ids) != n or tuple(done) != (n, n) or tuple(events) != (n, n):
        raise RuntimeError(f"separate instances (rows, right) = {tuple(done)}, events = {tuple(events)}")
    return {
        "seconds": round(seconds, 3),
        "steps_per_s": round(n / seconds, 1),
        "dispatch_seconds": round(dispatch_seconds, 3),
        "checked": {"instances_succeeded": done[1], "steps_succeeded_once": events[1]},
    }


# -- the run ---------------------------------------------------------------------------------------
def run_once(n: int, c: int, prefetches: tuple[int, ...], single: bool) -> dict[str, Any]:
    """Every figure once, in a fixed order: the pairs of one run are measured back to back."""
    pairs = [(f"c{c}" if p == 1 else f"c{c}_prefetch{p}", c, p) for p in prefetches]
    if single:
        pairs.append(("c1", 1, 1))
    run: dict[str, Any] = {}
    for tag, workers, prefetch in pairs:
        for kind, measure in (("map", one_map), ("separate", separate)):
            began = time.perf_counter()
            run[f"{kind}_{tag}"] = measure(n, workers, prefetch)
            value = json.dumps(run[f"{kind}_{tag}"])
            print(f"{kind}_{tag:<16} {value}  ({time.perf_counter() - began:.0f} s)", flush=True)
        run[f"ratio_{tag}"] = round(run[f"map_{tag}"]["seconds"] / run[f"separate_{tag}"]["seconds"], 2)
    return run


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median of each number over the runs (a ratio: the median of the runs' ratios)."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        if isinstance(first, dict):
            out[key] = {
                k: round(statistics.median(run[key][k] for run in runs), 4)
                for k, v in first.items()
                if isinstance(v, (int, float))
            }
        else:
            out[key] = round(statistics.median(run[key] for run in runs), 2)
    return out


def _commit() -> str:
    """The commit measured (with ``+changes`` if the work tree differs from it), if in git."""
    git = ["git", "-C", str(HERE.parent)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "fuseline", "migrations"], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 items instead of 10,000")
    parser.add_argument("--items", type=int, default=0, help="the number of items (overrides --quick)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="run the whole set N times; medians")
    parser.add_argument("--no-prefetch", action="store_true", help="skip the --prefetch 10 pair")
    parser.add_argument("--no-single", action="store_true", help="skip the 1-worker pair")
    parser.add_argument("--out", default=str(HERE / "results" / "map.json"))
    args = parser.parse_args()
    n = args.items or (1_000 if args.quick else 10_000)
    c = args.workers
    prefetches = (1,) if args.no_prefetch else (1, 10)
    runs = []
    for number in range(args.repeat):
        if args.repeat > 1:
            print(f"-- run {number + 1} of {args.repeat}", flush=True)
        runs.append(run_once(n, c, prefetches, not args.no_single))
    figures = medians(runs)
    print()
    of = f"median of {len(runs)} runs" if len(runs) > 1 else "one run"
    print(f"Map over {n:,} items vs {n:,} separately dispatched instances, PostgreSQL ({of})")
    print(f"{'':<22} {'map s':>8} {'map steps/s':>12} {'separate s':>11} {'steps/s':>9} {'map/separate':>13}")
    for key, value in figures.items():
        if key.startswith("ratio_"):
            tag = key[len("ratio_") :]
            a, b = figures[f"map_{tag}"], figures[f"separate_{tag}"]
            workers, _, prefetch = tag[1:].partition("_prefetch")
            label = f"{workers} worker{'s' if workers != '1' else ''}" + (
                f", prefetch {prefetch}" if prefetch else ""
            )
            print(
                f"{label:<22} {a['seconds']:>8.2f} {a['steps_per_s']:>12,.0f} {b['seconds']:>11.2f}"
                f" {b['steps_per_s']:>9,.0f} {value:>13.2f}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "items": n,
        "workers": c,
        "runs": len(runs),
        "commit": _commit(),
        "median": figures,
        "each_run": runs,
    }
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
