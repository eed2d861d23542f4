"""Peer benchmark: procrastinate (psycopg connector) on the local PostgreSQL.

Figures (one repetition each; a "task" is a no-op except in slots_*):
  enqueue_one_per_s     N tasks deferred one by one (defer_async), one client
  enqueue_batch_per_s   N_BATCH tasks via batch_defer_async, CHUNK per call
  drain_c1_per_s        N queued tasks, run_worker_async(wait=False, concurrency=1),
  drain_c4_per_s          ... concurrency=4; clock stops when the worker has caught up
  pickup_p50_ms/p99_ms  idle worker in its own process (LISTEN/NOTIFY, defaults);
                        defer call start -> task body start, first WARMUP dropped
  chain3_2000_c4_s      CHAINS chains, A defers B from its body, B defers C;
                        from enqueueing the A's until all 3 x CHAINS tasks are done (c=4)
  slots_1x100_s         SLOTS_N1 queued `async` tasks that each await asyncio.sleep(0.1),
                        one worker process, run_worker_async(concurrency=100, wait=False);
                        from releasing the worker until it has caught up and exited
                        (ideal 1.0 s for 1,000)
  slots_4x100_s         SLOTS_N4 such tasks, four worker processes (own app, own pool)
                        at concurrency=100 each, released together; until all four
                        exited (ideal 2.5 s for 10,000)
Writes bench/results/procrastinate.json.

    python bench/peers/peer_procrastinate.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time

import peerutil as pu
import procrastinate

DB = "peer_procrastinate"
SLOT_SLEEP_S = 0.1  # each "io_sleep" task awaits asyncio.sleep(0.1)
# Tasks live in __main__ on purpose (they carry explicit names); silence that warning.
logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=pu.dsn(DB), min_size=1, max_size=10)
)


class State:
    """Counters the task bodies update (one event loop per process)."""

    lat: list[tuple[int, float]] = []
    target = 0
    chains_done = 0
    slots_ran = 0
    done: asyncio.Event | None = None


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="pickup")
async def pickup(t0: float, seq: int) -> None:
    State.lat.append((seq, time.time() - t0))
    if len(State.lat) >= State.target and State.done is not None:
        State.done.set()


@app.task(name="chain_a")
async def chain_a(i: int) -> None:
    await chain_b.defer_async(i=i)


@app.task(name="chain_b")
async def chain_b(i: int) -> None:
    await chain_c.defer_async(i=i)


@app.task(name="chain_c")
async def chain_c(i: int) -> None:
    State.chains_done += 1
    if State.chains_done >= State.target and State.done is not None:
        State.done.set()


@app.task(name="io_sleep")
async def io_sleep() -> None:
    await asyncio.sleep(SLOT_SLEEP_S)
    State.slots_ran += 1


def reset_jobs() -> None:
    pu.sql(DB, "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers CASCADE")
    pu.sql(DB, "VACUUM ANALYZE procrastinate_jobs")
    pu.checkpoint(DB)


def check_all_succeeded(n: int) -> None:
    rows = pu.sql(DB, "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
    counts = dict(rows)
    if counts != {"succeeded": n}:
        raise RuntimeError(f"expected {n} succeeded jobs, found {counts}")


async def enqueue_batched(n: int, chunk: int, task: procrastinate.tasks.Task = noop) -> float:
    """Defer n argument-less tasks in batch_defer_async calls of `chunk`; returns tasks/s."""
    with pu.Timer() as t:
        for start in range(0, n, chunk):
            await task.batch_defer_async(*([{}] * min(chunk, n - start)))
    return n / t.elapsed


async def measure_enqueue(report: pu.Report, args: argparse.Namespace) -> None:
    with report.phase("enqueue_one_per_s"):
        reset_jobs()
        with pu.Timer() as t:
            for _ in range(args.n):
                await noop.defer_async()
        report.add("enqueue_one_per_s", args.n / t.elapsed)
    with report.phase("enqueue_batch_per_s"):
        reset_jobs()
        report.add("enqueue_batch_per_s", await enqueue_batched(args.n_batch, args.chunk))


async def measure_drain(report: pu.Report, args: argparse.Namespace, concurrency: int) -> None:
    figure = f"drain_c{concurrency}_per_s"
    with report.phase(figure):
        reset_jobs()
        await enqueue_batched(args.n, args.chunk)
        pu.checkpoint(DB)
        with pu.Timer() as t:
            worker = app.run_worker_async(concurrency=concurrency, wait=False, install_signal_handlers=False)
            await asyncio.wait_for(worker, timeout=args.phase_timeout)
        check_all_succeeded(args.n)
        report.add(figure, args.n / t.elapsed)


async def pickup_worker(n: int) -> None:
    """Subprocess body: idle worker with default settings; exits after n pickup tasks."""
    State.target, State.done = n, asyncio.Event()
    async with app.open_async():
        worker = asyncio.create_task(app.run_worker_async(concurrency=1, install_signal_handlers=False))
        print("READY", flush=True)
        await asyncio.wait_for(State.done.wait(), timeout=120)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    print(json.dumps(State.lat), flush=True)


async def measure_pickup(report: pu.Report, args: argparse.Namespace) -> None:
    with report.phase("pickup"):
        reset_jobs()
        total = args.pickup_n + args.warmup
        proc = pu.spawn([__file__, "_pickup_worker", str(total)])
        pu.wait_ready(proc)
        await asyncio.sleep(2.0)  # let the worker register and LISTEN
        rng = random.Random(42)
        for seq in range(total):
            await asyncio.sleep(rng.uniform(args.gap_min_ms, args.gap_max_ms) / 1000.0)
            await pickup.defer_async(t0=time.time(), seq=seq)
        lat = await asyncio.to_thread(pu.collect_json, proc, args.phase_timeout)
        lat_ms = [v * 1000.0 for seq, v in lat if seq >= args.warmup]
        if len(lat_ms) != args.pickup_n:
            raise RuntimeError(f"{len(lat_ms)} pickup samples, expected {args.pickup_n}")
        report.add("pickup_p50_ms", pu.percentile(lat_ms, 50))
        report.add("pickup_p99_ms", pu.percentile(lat_ms, 99))


async def measure_chain(report: pu.Report, args: argparse.Namespace, concurrency: int = 4) -> None:
    with report.phase("chain3_2000_c4_s"):
        reset_jobs()
        State.chains_done, State.target, State.done = 0, args.chains, asyncio.Event()
        with pu.Timer() as t:
            await chain_a.batch_defer_async(*[{"i": i} for i in range(args.chains)])
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
            )
            try:
                await asyncio.wait_for(State.done.wait(), timeout=args.phase_timeout)
            finally:
                worker.cancel()  # graceful: waits for in-flight jobs to be recorded
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        check_all_succeeded(3 * args.chains)
        report.add("chain3_2000_c4_s", t.elapsed)


async def slots_worker(concurrency: int) -> None:
    """Subprocess body: opens the app, prints READY, waits for a line on stdin (the
    release), then run_worker_async(concurrency, wait=False) until it has caught up;
    prints {"ran": n} and exits."""
    async with app.open_async():
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await app.run_worker_async(concurrency=concurrency, wait=False, install_signal_handlers=False)
    print(json.dumps({"ran": State.slots_ran}), flush=True)


async def measure_slots(
    report: pu.Report, args: argparse.Namespace, figure: str, n: int, procs: int, concurrency: int = 100
) -> None:
    """n queued io_sleep tasks drained by `procs` worker processes released together.

    The clock runs from writing the release line to every worker until the last one
    has exited (its wait=False worker returned: nothing left to fetch, in-flight done).
    """
    with report.phase(figure):
        reset_jobs()
        await enqueue_batched(n, args.chunk, io_sleep)
        pu.checkpoint(DB)
        elapsed, outs = pu.release_together(
            [__file__, "_slots_worker", str(concurrency)], procs, args.phase_timeout
        )
        ran = [out["ran"] for out in outs]
        if sum(ran) != n:
            raise RuntimeError(f"workers ran {ran} tasks, expected {n} in all")
        check_all_succeeded(n)
        report.add(figure, elapsed)


async def main(report: pu.Report, args: argparse.Namespace) -> None:
    pu.recreate_db(DB)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await measure_enqueue(report, args)
        await measure_drain(report, args, 1)
        await measure_drain(report, args, 4)
        await measure_pickup(report, args)
        await measure_chain(report, args)
        # Last: 100 concurrent I/O-bound tasks per worker process (fuseline's "slots").
        await measure_slots(report, args, "slots_1x100_s", args.slots_n1, 1)
        await measure_slots(report, args, "slots_4x100_s", args.slots_n4, 4)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3_000, help="tasks per drain and one-by-one enqueue")
    ap.add_argument("--n-batch", type=int, default=10_000, help="tasks for the batched enqueue")
    ap.add_argument("--chunk", type=int, default=1_000, help="tasks per batch_defer_async call")
    ap.add_argument("--chains", type=int, default=2_000)
    ap.add_argument("--pickup-n", type=int, default=100, help="pickup samples kept")
    ap.add_argument("--warmup", type=int, default=10, help="pickup samples dropped first")
    ap.add_argument("--gap-min-ms", type=float, default=30.0)
    ap.add_argument("--gap-max-ms", type=float, default=70.0)
    ap.add_argument("--slots-n1", type=int, default=1_000, help="io tasks for slots_1x100_s")
    ap.add_argument("--slots-n4", type=int, default=10_000, help="io tasks for slots_4x100_s")
    ap.add_argument("--phase-timeout", type=float, default=90.0, help="s, per measurement")
    ap.add_argument("--budget", type=int, default=180, help="hard limit for the whole script, s")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_batch, args.chains, args.pickup_n = 300, 1_000, 100, 20
        args.slots_n1, args.slots_n4 = 200, 800
        args.phase_timeout, args.budget = 30.0, 60
    return args


if __name__ == "__main__":
    if sys.argv[1:2] == ["_pickup_worker"]:
        asyncio.run(pickup_worker(int(sys.argv[2])))
        sys.exit(0)
    if sys.argv[1:2] == ["_slots_worker"]:
        asyncio.run(slots_worker(int(sys.argv[2])))
        sys.exit(0)
    a = parse_args()
    params = {k: v for k, v in vars(a).items() if k not in ("quick", "budget", "phase_timeout")}
    rep = pu.Report("procrastinate", procrastinate.__version__, a.quick, params)
    rep.note("LISTEN/NOTIFY on (default); drains and chain run in this process, pickup worker separate")
    rep.note("the child defer runs inside the parent's body, not in the parent's completion transaction")
    rep.note(
        "slots_*: async task awaiting asyncio.sleep(0.1); ideal 1.0 s for slots_1x100_s (1,000 tasks / 100 at"
        " once) and 2.5 s for slots_4x100_s (10,000 / 400); worker processes open the app (psycopg pool"
        " max_size=10), then are released together; clock stops when every worker has exited"
    )
    rep.note(
        "slots_*: run_worker_async(concurrency=100, wait=False, install_signal_handlers=False), otherwise"
        " defaults (LISTEN/NOTIFY on); the worker fetches one job per query"
    )
    pu.run(rep, lambda: asyncio.run(main(rep, a)), a.budget)
