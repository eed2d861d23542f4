"""How fast any PostgreSQL queue can pick up a job on this machine, next to fuseline's pickup.

The idle pickup figure of ``make bench`` is the time from the dispatch call to
the step starting, with instances dispatched one at a time 30-70 ms apart. On
an idle machine each of those steps starts from sleep: the dispatcher, its
server backend, the listening backend and the worker all wake up, and the
commits flush a WAL that has gone quiet. This script measures the least any
design pays for that, in raw SQL with nothing of fuseline's, and fuseline's
own pickup in the same run:

- the durable insert alone (one row, autocommit), back to back and 30-70 ms apart;
- the raw pickup: one process inserts a job row and notifies in one
  autocommit statement (durable, as a dispatch must be), every 30-70 ms;
  another waits on LISTEN and, woken, claims the row with ``UPDATE ...
  WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING`` on the
  same connection, in autocommit: the fewest round trips and processes a
  pickup can take (fuseline's worker listens on a connection of its own);
- fuseline's pickup, measured as ``make bench`` does (``fuseline_bench.pickup``).

The figures are milliseconds from the dispatch call (p50, p99). Writes
``bench/results/pickup_floor.json``.

    python bench/pickup_floor.py [--samples N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuseline_bench as fb

CHANNEL = "pickup_floor"
JOBS = """
    DROP TABLE IF EXISTS floor_jobs;
    CREATE TABLE floor_jobs (
        id bigserial PRIMARY KEY,
        state text NOT NULL DEFAULT 'queued',
        sent float8 NOT NULL
    );
    CREATE INDEX floor_jobs_queued ON floor_jobs (id) WHERE state = 'queued';
"""
DISPATCH = f"""
    WITH job AS (INSERT INTO floor_jobs (sent) VALUES (%s) RETURNING id)
    SELECT pg_notify('{CHANNEL}', ''), (SELECT id FROM job)
"""
CLAIM = """
    UPDATE floor_jobs SET state = 'running'
     WHERE id = (SELECT id FROM floor_jobs WHERE state = 'queued' ORDER BY id
                  FOR UPDATE SKIP LOCKED LIMIT 1)
    RETURNING id
"""


def dsn(url: str) -> str:
    return url.replace("postgresql+psycopg", "postgresql")


def pause(n: int) -> None:
    """The spacing of ``make bench``'s pickup: 30-70 ms."""
    time.sleep(0.03 + (n % 5) * 0.01)


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p99 = fb.p50_p99(values, digits=3)
    return {"p50_ms": p50, "p99_ms": p99}


def durable_insert(url: str, samples: int) -> dict[str, Any]:
    """One-row autocommit inserts into a logged table, back to back and spaced."""
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS floor_insert (id bigserial PRIMARY KEY, v text)")
        figures: dict[str, Any] = {}
        for spaced in (False, True):
            took = []
            for n in range(samples + 10):
                began = time.perf_counter()
                conn.execute("INSERT INTO floor_insert (v) VALUES (%s)", ("x",), prepare=True)
                took.append((time.perf_counter() - began) * 1000)
                if spaced:
                    pause(n)
            figures["spaced" if spaced else "back_to_back"] = percentiles(took[10:])
        return figures


def raw_pickup(url: str, samples: int) -> dict[str, Any]:
    """The raw SQL pickup: dispatch-and-notify, LISTEN, claim; ms from the dispatch call."""
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute(JOBS)
    context = mp.get_context("fork")
    ready, stop, stamps = context.Semaphore(0), context.Event(), context.Queue()
    claimer = context.Process(target=_raw_claimer, args=(url, ready, stop, stamps))
    claimer.start()
    ready.acquire()
    time.sleep(1.0)
    calls = []
    try:
        with psycopg.connect(dsn(url), autocommit=True) as conn:
            for n in range(samples + 10):
                sent = time.time()
                conn.execute(DISPATCH, (sent,), prepare=True)
                calls.append((time.time() - sent) * 1000)
                pause(n)
            time.sleep(0.5)  # the last claim
            sent_at = dict(conn.execute("SELECT id, sent FROM floor_jobs").fetchall())
    finally:
        stop.set()
    claimed = stamps.get(timeout=30)
    claimer.join(10)
    ids = sorted(sent_at)[10:]
    picked = [(claimed[i] - sent_at[i]) * 1000 for i in ids if i in claimed]
    if len(picked) != samples:
        raise RuntimeError(f"the raw claimer picked {len(picked)} of {samples} jobs")
    return {"pickup": percentiles(picked), "dispatch_call": percentiles(calls[10:])}


def _raw_claimer(url: str, ready: Any, stop: Any, picked: Any) -> None:
    """Wait on LISTEN; woken, claim queued jobs one by one. Each claim's time is taken when it
    returned (as fuseline's is when the step starts) and sent back when told to stop."""
    stamps: dict[int, float] = {}
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        ready.release()
        while not stop.is_set():
            # Taken out of notifies() first: the connection is not free while it iterates.
            if not list(conn.notifies(timeout=0.2, stop_after=1)):
                continue
            while (row := conn.execute(CLAIM, prepare=True).fetchone()) is not None:
                stamps[row[0]] = time.time()
    picked.put(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="pickups measured per figure (default 200)")
    args = parser.parse_args()
    url = fb.fresh_postgres()
    figures: dict[str, Any] = {"durable_insert": durable_insert(url, args.samples)}
    print("durable insert:", figures["durable_insert"], flush=True)
    figures["raw_pickup"] = raw_pickup(url, args.samples)
    print("raw SQL pickup:", figures["raw_pickup"], flush=True)
    figures["fuseline_pickup"] = fb.pickup(url, args.samples)
    print("fuseline pickup:", figures["fuseline_pickup"], flush=True)
    fb.write_results(str(Path(fb.__file__).resolve().parent / "results" / "pickup_floor.json"), figures)


if __name__ == "__main__":
    main()
