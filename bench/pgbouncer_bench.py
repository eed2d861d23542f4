"""fuseline straight to PostgreSQL and through PgBouncer in transaction mode, side by side.

Starts its own PgBouncer (``pool_mode = transaction``, Debian's 1.18) on a
loopback port in front of the local server, then measures both ways, each
with polling workers (``listen=False``; the pooled URL carries
``?pooler=transaction``, which turns LISTEN off anyway):

- a no-op drain with 4 and with 16 worker processes (steps per second);
- idle pickup latency p50/p99 with one polling worker (every 0.05 s);
- what one claim costs, empty (a poll) or taking a step, from one process
  (and direct with prepared statements off: what planning each time costs);
- the server connections PostgreSQL shows for the database meanwhile
  (``pg_stat_activity``, sampled every 20 ms), and behind PgBouncer the
  client connections it holds.

Each figure runs on a fresh database. Prints one JSON line per figure and
writes them all to ``bench/results/pgbouncer.json``.

    python bench/pgbouncer_bench.py            # about 2 minutes
    python bench/pgbouncer_bench.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fuseline_bench  # noqa: E402  (its workloads, throwaway database and worker process)

from fuseline.broker import SqlBroker  # noqa: E402
from fuseline.broker.sql.engine import create_database_engine  # noqa: E402
from tests.support.pgbouncer import ConnectionSampler, PgBouncer  # noqa: E402

fuseline_bench.DATABASE = "fuseline_pgbouncer_bench"  # not the main benchmark's database
#: PgBouncer's server connections for the database (``default_pool_size``).
POOL_SIZE = 4
SAMPLE_SECONDS = 0.02
VIAS = ("direct", "pgbouncer")


def _database_url() -> str:
    """The benchmark database, direct (a fresh one each time it is called)."""
    return fuseline_bench.fresh_postgres()


def _ways(bouncer: PgBouncer) -> Iterator[tuple[str, str]]:
    """("direct", url) and ("pgbouncer", url) for a fresh database each."""
    yield "direct", _database_url()
    yield "pgbouncer", bouncer.url(_database_url().rsplit("/", 1)[1])


@contextmanager
def _sampled(url: str, bouncer: PgBouncer, via: str) -> Iterator[ConnectionSampler]:
    direct = make_url(url).difference_update_query(["pooler"])
    if via == "pgbouncer":
        direct = direct.set(host=bouncer.server_url.host, port=bouncer.server_url.port)
    with ConnectionSampler(direct, bouncer if via == "pgbouncer" else None, SAMPLE_SECONDS) as sampler:
        yield sampler


def _connections(sampler: ConnectionSampler, via: str) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "server_connections_max": sampler.servers,
        "server_connections_mean": round(sampler.servers_mean, 1),
    }
    if via == "pgbouncer":
        figures["client_connections_max"] = sampler.clients
    return figures


def drain(url: str, via: str, bouncer: PgBouncer, steps: int, processes: int) -> dict[str, Any]:
    """``processes`` polling workers drain ``steps`` queued no-op steps; fails unless all ran."""
    fuseline_bench.dispatch_backlog(url, "noop", steps)
    fuseline_bench.checkpoint(url)
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    args = (url, "noop", start, ready, True, False)  # until idle, listen=False
    procs = [context.Process(target=fuseline_bench._worker, args=args) for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    # Forked before the sampler's thread starts: no child inherits a thread mid-query.
    with _sampled(url, bouncer, via) as sampler:
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
        raise RuntimeError(f"the drain {via} with {processes} workers did not finish cleanly")
    rate = {"seconds": round(seconds, 3), "steps_per_s": round(steps / seconds, 1)}
    return {**rate, **_connections(sampler, via)}


def pickup(url: str, via: str, bouncer: PgBouncer, samples: int) -> dict[str, Any]:
    """One idle polling worker; instances dispatched one at a time (see ``fuseline_bench.pickup``)."""
    with _sampled(url, bouncer, via) as sampler:
        figures = fuseline_bench.pickup(url, samples, listen=False)
    return {**figures, **_connections(sampler, via)}


def claims(url: str, via: str, samples: int, *, prepared: bool = True) -> dict[str, Any]:
    """One broker in this process: milliseconds of a claim that finds nothing (what a polling
    worker sends every interval) and of one that takes a step dispatched just before.
    ``prepared=False`` turns psycopg's prepared statements off on a direct connection, to tell
    what planning every statement costs from what the hop through PgBouncer does."""
    if prepared:
        broker = SqlBroker(url, listen=False)
    else:
        engine = create_database_engine(url, pool_size=3, connect_args={"prepare_threshold": None})
        broker = SqlBroker(engine, listen=False)
    try:
        worker_id = broker.register_worker([fuseline_bench.PICKUP.to_schema()])
        empty, taken = [], []
        for _ in range(samples + 10):
            began = time.perf_counter()
            broker.get_step(worker_id)
            empty.append((time.perf_counter() - began) * 1000)
        for _ in range(samples + 10):
            fuseline_bench.PICKUP.dispatch(broker, {"sent": 0.0})
            began = time.perf_counter()
            if broker.get_step(worker_id) is None:
                raise RuntimeError(f"a claim {via} found no step")
            taken.append((time.perf_counter() - began) * 1000)
    finally:
        broker.close()
        if not prepared:
            engine.dispose()
    # The first ten of each warm the connection (and, direct, psycopg prepares at the fifth).
    return {
        "empty_claim_p50_ms": round(statistics.median(empty[10:]), 2),
        "claim_p50_ms": round(statistics.median(taken[10:]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", default=str(HERE / "results" / "pgbouncer.json"))
    args = parser.parse_args()
    steps = 2_000 if args.quick else 10_000
    samples = 20 if args.quick else 100
    server = make_url(fuseline_bench.ADMIN_DSN).set(drivername="postgresql+psycopg")
    bouncer = PgBouncer(server, pool_size=POOL_SIZE)
    figures: dict[str, Any] = {"pool_size": POOL_SIZE, "noop_steps": steps, "pickup_samples": samples}

    def record(name: str, value: dict[str, Any]) -> None:
        figures[name] = value
        print(json.dumps({"figure": name, **value}), flush=True)

    try:
        for processes in (4, 16):
            for via, url in _ways(bouncer):
                record(f"drain_noop_c{processes}_{via}", drain(url, via, bouncer, steps, processes))
            direct, pooled = (figures[f"drain_noop_c{processes}_{via}"]["steps_per_s"] for via in VIAS)
            record(
                f"drain_noop_c{processes}_ratio",
                {"pgbouncer_over_direct_throughput": round(pooled / direct, 2)},
            )
        for via, url in _ways(bouncer):
            record(f"pickup_polling_{via}", pickup(url, via, bouncer, samples))
        for via, url in _ways(bouncer):
            record(f"claims_{via}", claims(url, via, samples))
        record("claims_direct_unprepared", claims(_database_url(), "direct", samples, prepared=False))
    finally:
        bouncer.stop()
    fuseline_bench.write_results(args.out, figures)


if __name__ == "__main__":
    main()
