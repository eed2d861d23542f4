"""Peer benchmark: pgqueuer (asyncpg driver) on the local PostgreSQL.

Figures (one repetition each; a "job" is a no-op except in slots_*):
  enqueue_one_per_s     N jobs enqueued one by one, one client
  enqueue_batch_per_s   N_BATCH jobs as list enqueues, CHUNK per call
  drain_c1_per_s        N queued jobs, one QueueManager, entrypoint concurrency_limit=1,
  drain_c4_per_s          ... concurrency_limit=4 (batch_size = limit); clock stops when
                          the last completion has been flushed (drain mode)
  drain_batched_per_s   N_BATCH jobs with pgqueuer's defaults: batch_size=10, no
                        concurrency limit (completions buffered, flushed every 10 / 0.1 s)
  pickup_p50_ms/p99_ms  idle QueueManager in its own process (defaults, LISTEN/NOTIFY);
                        enqueue call start -> entrypoint start, first WARMUP dropped
  chain3_2000_c4_s      CHAINS chains, job A enqueues B from its body, B enqueues C
                        (concurrency_limit=4); from enqueueing the A's until all C's ran
  slots_1x100_s         SLOTS_N1 queued `async` jobs that each await asyncio.sleep(0.1),
                        one worker process: entrypoint concurrency_limit=100,
                        run(batch_size=100, mode=drain); from releasing the worker until
                        drain mode returned and it exited (ideal 1.0 s for 1,000)
  slots_4x100_s         SLOTS_N4 such jobs, four worker processes (own QueueManager and
                        connection each) released together, until all four exited
                        (ideal 2.5 s for 10,000). concurrency_limit is enforced across
                        all workers, so it is 400 (= 4 x 100) here, batch_size=100
  slots_4x100_maxtasks_s  the same with the per-worker cap instead:
                        run(max_concurrent_tasks=100, batch_size=50), no entrypoint limit
Writes bench/results/pgqueuer.json.

    python bench/peers/peer_pgqueuer.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import asyncpg
import peerutil as pu
import pgqueuer
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.domain.types import QueueExecutionMode
from pgqueuer.models import Job

DB = "peer_pgqueuer"
SLOT_SLEEP_S = 0.1  # each "io" job awaits asyncio.sleep(0.1)


async def connect() -> asyncpg.Connection:
    return await asyncpg.connect(pu.dsn(DB))


def reset_jobs() -> None:
    pu.sql(DB, "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
    pu.sql(DB, "VACUUM ANALYZE pgqueuer")
    pu.checkpoint(DB)


def check_queue_empty() -> None:
    left = pu.sql(DB, "SELECT count(*) FROM pgqueuer")[0][0]
    if left:
        raise RuntimeError(f"{left} jobs still in the queue table")


async def enqueue_batched(q: Queries, n: int, chunk: int, entrypoint: str = "noop") -> float:
    """Enqueue n jobs (no payload) as list inserts of `chunk`; returns jobs/s."""
    with pu.Timer() as t:
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            await q.enqueue([entrypoint] * k, [None] * k, [0] * k)
    return n / t.elapsed


async def measure_enqueue(report: pu.Report, args: argparse.Namespace, q: Queries) -> None:
    with report.phase("enqueue_one_per_s"):
        reset_jobs()
        with pu.Timer() as t:
            for _ in range(args.n):
                await q.enqueue("noop", None)
        report.add("enqueue_one_per_s", args.n / t.elapsed)
    with report.phase("enqueue_batch_per_s"):
        reset_jobs()
        report.add("enqueue_batch_per_s", await enqueue_batched(q, args.n_batch, args.chunk))


async def drain(n: int, concurrency_limit: int, batch_size: int, timeout: float) -> float:
    """One QueueManager in drain mode until n jobs ran and their completions flushed."""
    conn = await connect()
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    done = {"n": 0}

    @qm.entrypoint("noop", concurrency_limit=concurrency_limit)
    async def noop(job: Job) -> None:
        done["n"] += 1
        if done["n"] >= n:
            qm.shutdown.set()

    try:
        with pu.Timer() as t:
            await asyncio.wait_for(qm.run(batch_size=batch_size, mode=QueueExecutionMode.drain), timeout)
    finally:
        await conn.close()
    if done["n"] != n:
        raise RuntimeError(f"ran {done['n']} jobs, expected {n}")
    check_queue_empty()
    return n / t.elapsed


async def measure_drain(
    report: pu.Report, args: argparse.Namespace, q: Queries, figure: str, n: int, limit: int, batch: int
) -> None:
    with report.phase(figure):
        reset_jobs()
        await enqueue_batched(q, n, args.chunk)
        pu.checkpoint(DB)
        report.add(figure, await drain(n, limit, batch, args.phase_timeout))


async def pickup_worker(n: int) -> None:
    """Subprocess body: idle QueueManager with defaults; exits after n pickup jobs."""
    conn = await connect()
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    lat: list[tuple[int, float]] = []

    @qm.entrypoint("pickup")
    async def pickup(job: Job) -> None:
        now = time.time()
        d = json.loads(job.payload)
        lat.append((d["seq"], now - d["t0"]))
        if len(lat) >= n:
            qm.shutdown.set()

    runner = asyncio.create_task(qm.run())
    print("READY", flush=True)
    await asyncio.wait_for(runner, timeout=120)
    await conn.close()
    print(json.dumps(lat), flush=True)


async def measure_pickup(report: pu.Report, args: argparse.Namespace, q: Queries) -> None:
    with report.phase("pickup"):
        reset_jobs()
        total = args.pickup_n + args.warmup
        proc = pu.spawn([__file__, "_pickup_worker", str(total)])
        pu.wait_ready(proc)
        await asyncio.sleep(2.0)  # let the worker LISTEN
        rng = random.Random(42)
        for seq in range(total):
            await asyncio.sleep(rng.uniform(args.gap_min_ms, args.gap_max_ms) / 1000.0)
            await q.enqueue("pickup", json.dumps({"t0": time.time(), "seq": seq}).encode())
        lat = await asyncio.to_thread(pu.collect_json, proc, args.phase_timeout)
        lat_ms = [v * 1000.0 for seq, v in lat if seq >= args.warmup]
        if len(lat_ms) != args.pickup_n:
            raise RuntimeError(f"{len(lat_ms)} pickup samples, expected {args.pickup_n}")
        report.add("pickup_p50_ms", pu.percentile(lat_ms, 50))
        report.add("pickup_p99_ms", pu.percentile(lat_ms, 99))


async def measure_chain(report: pu.Report, args: argparse.Namespace, q: Queries, limit: int = 4) -> None:
    with report.phase("chain3_2000_c4_s"):
        reset_jobs()
        conn = await connect()
        wq = Queries(AsyncpgDriver(conn))  # the worker's own connection enqueues the next link
        qm = QueueManager(wq)
        done = {"n": 0}

        @qm.entrypoint("chain_a", concurrency_limit=limit)
        async def chain_a(job: Job) -> None:
            await wq.enqueue("chain_b", job.payload)

        @qm.entrypoint("chain_b", concurrency_limit=limit)
        async def chain_b(job: Job) -> None:
            await wq.enqueue("chain_c", job.payload)

        @qm.entrypoint("chain_c", concurrency_limit=limit)
        async def chain_c(job: Job) -> None:
            done["n"] += 1
            if done["n"] >= args.chains:
                qm.shutdown.set()

        try:
            with pu.Timer() as t:
                payloads = [str(i).encode() for i in range(args.chains)]
                await q.enqueue(["chain_a"] * args.chains, payloads, [0] * args.chains)
                await asyncio.wait_for(qm.run(batch_size=limit), args.phase_timeout)
        finally:
            await conn.close()
        if done["n"] != args.chains:
            raise RuntimeError(f"{done['n']} chains finished, expected {args.chains}")
        check_queue_empty()
        report.add("chain3_2000_c4_s", t.elapsed)


async def slots_worker(limit: int, batch: int, max_tasks: int) -> None:
    """Subprocess body: one QueueManager whose "io" jobs each await asyncio.sleep(0.1).

    Connects and registers first, prints READY, waits for a line on stdin (the release),
    then runs in drain mode until the queue is empty; prints {"ran": n} and exits.
    """
    conn = await connect()
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    ran = {"n": 0}

    @qm.entrypoint("io", concurrency_limit=limit)
    async def io(job: Job) -> None:
        await asyncio.sleep(SLOT_SLEEP_S)
        ran["n"] += 1

    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    try:
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain, max_concurrent_tasks=max_tasks or None)
    finally:
        await conn.close()
    print(json.dumps({"ran": ran["n"]}), flush=True)


async def measure_slots(
    report: pu.Report,
    args: argparse.Namespace,
    q: Queries,
    figure: str,
    n: int,
    procs: int,
    limit: int,
    batch: int,
    max_tasks: int = 0,
) -> None:
    """n queued "io" jobs drained by `procs` worker processes released together.

    The clock runs from writing the release line to every worker until the last one
    has exited (drain mode returned: queue empty and its completions flushed).
    """
    with report.phase(figure):
        reset_jobs()
        await enqueue_batched(q, n, args.chunk, entrypoint="io")
        pu.checkpoint(DB)
        elapsed, outs = pu.release_together(
            [__file__, "_slots_worker", str(limit), str(batch), str(max_tasks)], procs, args.phase_timeout
        )
        ran = [out["ran"] for out in outs]
        if sum(ran) != n:
            raise RuntimeError(f"workers ran {ran} jobs, expected {n} in all")
        check_queue_empty()
        report.add(figure, elapsed)


async def main(report: pu.Report, args: argparse.Namespace) -> None:
    pu.recreate_db(DB)
    conn = await connect()
    try:
        q = Queries(AsyncpgDriver(conn))
        await q.install()
        await measure_enqueue(report, args, q)
        await measure_drain(report, args, q, "drain_c1_per_s", args.n, 1, 1)
        await measure_drain(report, args, q, "drain_c4_per_s", args.n, 4, 4)
        await measure_drain(report, args, q, "drain_batched_per_s", args.n_batch, 0, 10)
        await measure_pickup(report, args, q)
        await measure_chain(report, args, q)
        # Last: 100 concurrent I/O-bound jobs per worker process (fuseline's "slots").
        # An entrypoint's concurrency_limit is enforced in SQL across ALL workers, so the
        # 4-process run gives it 4 x 100; max_concurrent_tasks is the per-worker cap.
        await measure_slots(report, args, q, "slots_1x100_s", args.slots_n1, 1, 100, 100)
        await measure_slots(report, args, q, "slots_4x100_s", args.slots_n4, 4, 400, 100)
        await measure_slots(report, args, q, "slots_4x100_maxtasks_s", args.slots_n4, 4, 0, 50, 100)
    finally:
        await conn.close()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3_000, help="jobs per drain and one-by-one enqueue")
    ap.add_argument("--n-batch", type=int, default=10_000, help="jobs for batched enqueue and drain")
    ap.add_argument("--chunk", type=int, default=1_000, help="jobs per list enqueue call")
    ap.add_argument("--chains", type=int, default=2_000)
    ap.add_argument("--pickup-n", type=int, default=100, help="pickup samples kept")
    ap.add_argument("--warmup", type=int, default=10, help="pickup samples dropped first")
    ap.add_argument("--gap-min-ms", type=float, default=30.0)
    ap.add_argument("--gap-max-ms", type=float, default=70.0)
    ap.add_argument("--slots-n1", type=int, default=1_000, help="io jobs for slots_1x100_s")
    ap.add_argument("--slots-n4", type=int, default=10_000, help="io jobs for slots_4x100_s")
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
        asyncio.run(slots_worker(*(int(v) for v in sys.argv[2:5])))
        sys.exit(0)
    a = parse_args()
    params = {k: v for k, v in vars(a).items() if k not in ("quick", "budget", "phase_timeout")}
    rep = pu.Report("pgqueuer", pgqueuer.__version__, a.quick, params)
    rep.note("drain_batched: defaults (batch_size 10, unlimited); completions may sit in memory up to 0.1 s")
    rep.note("the child enqueue runs inside the parent's body, not in the parent's completion transaction")
    rep.note(
        "slots_*: each job awaits asyncio.sleep(0.1); ideal 1.0 s for slots_1x100_s (1,000 jobs / 100 at"
        " once) and 2.5 s for slots_4x100_s (10,000 / 400); worker processes connect, then are released"
        " together; clock stops when every worker's drain-mode run() has returned and the process exited"
    )
    rep.note(
        "slots_1x100_s: entrypoint concurrency_limit=100, run(batch_size=100, mode=drain). slots_4x100_s: "
        "concurrency_limit is enforced across all workers (100 would cap the 4 processes at 100 together: "
        "14.4 s by hand), so concurrency_limit=400 (4 x 100) and batch_size=100 in each process. "
        "slots_4x100_maxtasks_s: the per-worker cap instead, run(max_concurrent_tasks=100, batch_size=50) "
        "(it must be >= 2 x batch_size), no entrypoint limit"
    )
    pu.run(rep, lambda: asyncio.run(main(rep, a)), a.budget)
