"""Many workers against one PostgreSQL: 1 to 200 processes, direct and through PgBouncer.

How far one server carries a fleet of workers is a question of connections
before it is one of throughput: every worker process holds its broker's
connections (``connections=2`` by default; slots add none; ``listen=True``
adds one), so direct workers stop fitting at ``max_connections``, while
behind PgBouncer in transaction mode the server sees the pool, however
many workers there are.

Each point dispatches ``steps`` one-step instances whose step awaits 50 ms
(an API call), starts N light worker processes (``slots=4``, polling with
``listen=False``: a pooled URL turns LISTEN off anyway, and so both ways
hold the same two connections), releases them together and times the drain
until no instance is left running. Each worker times its own claims (the
``get_steps`` round trip, the slot loop's only claim call) and hands them
back when it exits. Meanwhile the server connections are sampled from
``pg_stat_activity`` (and PgBouncer's client connections from its console),
and the CPU that PostgreSQL's processes and the workers used is read from
``/proc``: what gives out first on this machine. A direct point that would
need more connections than the server allows is not run, and says so.

    python bench/many_workers.py            # 1 to 200 workers, both ways (about 5 minutes)
    python bench/many_workers.py --quick    # 1 to 20 workers: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fuseline_bench  # noqa: E402  (its throwaway database)

from fuseline import AsyncStep, StepAssignment, Workflow  # noqa: E402
from fuseline.broker import SqlBroker  # noqa: E402
from fuseline.clients import LocalBrokerClient  # noqa: E402
from fuseline.engines import ProcessEngine  # noqa: E402
from tests.support.pgbouncer import ConnectionSampler, PgBouncer  # noqa: E402

fuseline_bench.DATABASE = "fuseline_many_workers_bench"  # not another benchmark's database
WAIT_SECONDS = 0.05
SLOTS = 4
#: Connections one worker process holds here: the broker's budget (listen is off).
CONNECTIONS_PER_WORKER = 2
#: PgBouncer's server connections for the database.
POOL_SIZE = 20
#: Server connections kept free for the sampler, the dispatcher and an operator.
HEADROOM = 6
#: Steps per point: what the slots would drain in this many seconds at best, within the bounds;
#: shorter drains measure the start and the tail rather than the steady state.
IDEAL_SECONDS = 10
MIN_STEPS, MAX_STEPS = 1_000, 8_000
#: A point that takes longer than this has hung: its workers are killed and the run fails.
DEADLINE_SECONDS = 300
POLL_SECONDS = 0.1
#: The connection the benchmark's own drain check holds (left out of the server connections).
CHECK_CONNECTIONS = 1


class Call(AsyncStep):
    """A step that waits on I/O, as most real steps do."""

    async def run_step(self) -> None:
        await asyncio.sleep(WAIT_SECONDS)


WORKFLOW = Workflow([Call(name="call")], workflow_id="bench-many-workers", version="1")


class TimedClient(LocalBrokerClient):
    """The in-process client, timing each claim round trip (milliseconds) and what it returned."""

    def __init__(self, broker: SqlBroker) -> None:
        super().__init__(broker)
        self.claims: list[tuple[float, int]] = []

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        began = time.perf_counter()
        taken = super().get_steps(worker_id, limit)
        self.claims.append(((time.perf_counter() - began) * 1000, len(taken)))
        return taken


def _worker(url: str, start: Any, stop: Any, ready: Any, results: Any) -> None:
    broker = SqlBroker(url, listen=False)
    client = TimedClient(broker)
    engine = ProcessEngine(client, [WORKFLOW], slots=SLOTS)
    ready.release()
    start.wait()
    try:
        # The parent says when the queue is drained: a check from every worker at every turn
        # of its loop would add a query per claim that no real worker sends.
        engine.work(block=True, poll_interval=POLL_SECONDS, until=stop.is_set)
    finally:
        engine.close()
        broker.close()
        results.put(client.claims)


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User and system CPU each process has used so far (one that exited is left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def _cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between the two readings; a process started in between counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def _server_pids() -> list[int]:
    """Every PostgreSQL process on this machine (backends, WAL writer, checkpointer...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _allowed_connections() -> int:
    with psycopg.connect(fuseline_bench.ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        ).fetchone()
    return int(row[0]) if row else 0


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def point(via: str, workers: int, bouncer: PgBouncer, steps: int | None = None) -> dict[str, Any]:
    """One drain with ``workers`` processes on a fresh database, direct or through ``bouncer``."""
    direct = fuseline_bench.fresh_postgres()
    url = bouncer.url(direct.rsplit("/", 1)[1]) if via == "pgbouncer" else direct
    steps = steps or min(MAX_STEPS, max(MIN_STEPS, int(workers * SLOTS / WAIT_SECONDS * IDEAL_SECONDS)))
    dispatcher = SqlBroker(direct)
    try:
        for offset in range(0, steps, 1000):
            dispatcher.dispatch_many(WORKFLOW.to_schema(), [{}] * min(1000, steps - offset))
    finally:
        dispatcher.close()
    fuseline_bench.checkpoint(direct)
    context = mp.get_context("fork")
    start, stop, ready, results = context.Event(), context.Event(), context.Semaphore(0), context.Queue()
    args = (url, start, stop, ready, results)
    procs = [context.Process(target=_worker, args=args) for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    # Forked before the sampler's thread starts: no child inherits a thread mid-query.
    check = SqlBroker(direct, listen=False, connections=CHECK_CONNECTIONS)
    try:
        with ConnectionSampler(make_url(direct), bouncer if via == "pgbouncer" else None, 0.05) as sampler:
            workers_pids = [p.pid for p in procs if p.pid]
            cpu_before = (_cpu_seconds(_server_pids()), _cpu_seconds(workers_pids))
            began = time.perf_counter()
            start.set()
            while check.has_running_instances():
                if time.perf_counter() - began > DEADLINE_SECONDS:
                    raise RuntimeError(f"the drain {via} with {workers} workers hung")
                time.sleep(0.02)
            seconds = time.perf_counter() - began
            cpu_after = (_cpu_seconds(_server_pids()), _cpu_seconds(workers_pids))
        stop.set()
        claims = [call for _ in procs for call in results.get(timeout=60)]
    except queue.Empty:
        raise RuntimeError(f"the workers {via} with {workers} workers did not stop") from None
    finally:
        stop.set()
        check.close()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a worker {via} with {workers} workers failed")
    server_cpu, worker_cpu = (_cpu_between(b, a) for a, b in zip(cpu_after, cpu_before, strict=True))
    taking = [ms for ms, taken in claims if taken]
    figures: dict[str, Any] = {
        "workers": workers,
        "slots": SLOTS,
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(steps / seconds, 1),
        "ideal_steps_per_s": round(workers * SLOTS / WAIT_SECONDS, 1),
        "claims": len(claims),
        "claims_taking_steps": len(taking),
        "steps_per_claim": round(steps / max(1, len(taking)), 2),
        "claim_p50_ms": round(statistics.median(taking), 2) if taking else None,
        "claim_p99_ms": round(_percentile(taking, 0.99), 2) if taking else None,
        "empty_claim_p50_ms": round(statistics.median([ms for ms, n in claims if not n] or [0.0]), 2),
        "server_cpu_ms_per_step": round(server_cpu * 1000 / steps, 3),
        "worker_cpu_ms_per_step": round(worker_cpu * 1000 / steps, 3),
        "cpu_busy_share": round((server_cpu + worker_cpu) / (seconds * (os.cpu_count() or 1)), 2),
        "server_connections_max": sampler.servers - CHECK_CONNECTIONS,
        "server_connections_mean": round(sampler.servers_mean - CHECK_CONNECTIONS, 1),
    }
    if via == "pgbouncer":
        figures["client_connections_max"] = sampler.clients
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 to 20 workers: a smoke run")
    parser.add_argument("--workers", help="comma-separated worker counts (default 1,10,25,50,100,200)")
    parser.add_argument(
        "--steps", type=int, help="steps per point (default: 10 s at the ideal rate, within 1,000-8,000)"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "many_workers.json"))
    args = parser.parse_args()
    default = "1,5,20" if args.quick else "1,10,25,50,100,200"
    counts = [int(n) for n in (args.workers or default).split(",")]
    allowed = _allowed_connections()
    figures: dict[str, Any] = {
        "slots": SLOTS,
        "wait_seconds": WAIT_SECONDS,
        "connections_per_worker": CONNECTIONS_PER_WORKER,
        "server_allows": allowed,
        "pool_size": POOL_SIZE,
    }
    server = make_url(fuseline_bench.ADMIN_DSN).set(drivername="postgresql+psycopg")
    clients = CONNECTIONS_PER_WORKER * max(counts) + 50
    bouncer = PgBouncer(server, pool_size=POOL_SIZE, max_client_conn=clients)
    try:
        for workers in counts:
            for via in ("direct", "pgbouncer"):
                name = f"{via}_{workers}"
                needed = workers * CONNECTIONS_PER_WORKER + HEADROOM
                if via == "direct" and needed > allowed:
                    value: dict[str, Any] = {
                        "workers": workers,
                        "not_run": f"needs {needed} connections; the server allows {allowed}",
                    }
                else:
                    value = point(via, workers, bouncer, args.steps)
                figures[name] = value
                print(json.dumps({"figure": name, **value}), flush=True)
    finally:
        bouncer.stop()
    fuseline_bench.write_results(args.out, figures)


if __name__ == "__main__":
    main()
