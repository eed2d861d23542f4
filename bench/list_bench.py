"""Listing at scale: one page of ``instances list`` with 1,000,000 instances in the table.

Fills a fresh PostgreSQL database with 1M finished and running instances
(five workflows, a tenth of them keyed, one step each, created one second
apart) by SQL, then times ``broker.list_instances`` for each filter the CLI
offers, 30 times each, and prints the median and p95 in milliseconds (the
goal: every filtered page under 50 ms). Results go to
``bench/results/listing.json``.

    python bench/list_bench.py            # 1,000,000 instances
    python bench/list_bench.py --quick    # 100,000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuseline import FunctionStep, Workflow  # noqa: E402
from fuseline.broker import SqlBroker  # noqa: E402

ADMIN_DSN = os.environ.get("FUSELINE_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "fuseline_list_bench"
WORKFLOWS = 5
RUNS = 30


def work(x: int) -> int:
    return x


FLOWS = [
    Workflow(outputs=FunctionStep(work), workflow_id=f"bench-list-{n}", version="1") for n in range(WORKFLOWS)
]

FILL = """
INSERT INTO fuseline_instances (id, workflow_id, version, status, inputs, result, error, created_at,
                                updated_at, finished_at, key, priority)
SELECT gen_random_uuid(), 'bench-list-' || (n %% %(workflows)s), '1',
       CASE WHEN n %% 10 < 7 THEN 'SUCCEEDED' WHEN n %% 10 < 9 THEN 'FAILED' ELSE 'RUNNING' END,
       '{"x": 1}', CASE WHEN n %% 10 < 7 THEN '1' END, CASE WHEN n %% 10 IN (7, 8) THEN 'boom' END,
       %(start)s + make_interval(secs => n), %(start)s + make_interval(secs => n),
       CASE WHEN n %% 10 < 9 THEN %(start)s + make_interval(secs => n + 1) END,
       CASE WHEN n %% 10 = 3 THEN 'key-' || n END, 0
  FROM generate_series(1, %(count)s) AS n
"""
STEPS = """
INSERT INTO fuseline_steps (instance_id, workflow_id, version, name, state, attempt, max_attempts, queue)
SELECT id, workflow_id, version, 'work', CASE status WHEN 'RUNNING' THEN 'QUEUED' ELSE status END, 1, 3,
       'default'
  FROM fuseline_instances
"""


def fresh_database() -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE
    broker = SqlBroker(url, migrate=True)
    broker.register_workflows([f.to_schema() for f in FLOWS])
    broker.close()
    return url


def fill(url: str, count: int, start: datetime) -> float:
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FILL, {"workflows": WORKFLOWS, "start": start, "count": count})
        conn.execute(STEPS)
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - began


def timed(call) -> dict[str, float]:
    call()  # warm the plan and the cache
    samples = []
    for _ in range(RUNS):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 instances instead of 1,000,000")
    args = parser.parse_args()
    count = 100_000 if args.quick else 1_000_000
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    url = fresh_database()
    seconds = fill(url, count, start)
    print(f"{count:,} instances and steps written in {seconds:.1f} s")
    broker = SqlBroker(url)
    try:
        deep = broker.list_instances(limit=1, offset=count // 2)[0].instance_id
        middle = start + timedelta(seconds=count // 2)
        cases = {
            "newest page (no filter)": lambda: broker.list_instances(limit=20),
            "status FAILED": lambda: broker.list_instances(status="FAILED", limit=20),
            "workflow bench-list-3": lambda: broker.list_instances(workflow_id="bench-list-3", limit=20),
            "status + workflow": lambda: broker.list_instances(
                status="RUNNING", workflow_id="bench-list-4", limit=20
            ),
            # No instance matches both: the whole RUNNING part of the status index is read.
            "status + workflow, none match": lambda: broker.list_instances(
                status="RUNNING", workflow_id="bench-list-2", limit=20
            ),
            "created in a one-hour window": lambda: broker.list_instances(
                since=middle, until=middle + timedelta(hours=1), limit=20
            ),
            "key (with workflow)": lambda: broker.list_instances(
                workflow_id="bench-list-3", key=f"key-{count // 2 + 3 - (count // 2 + 3) % 10 + 3}", limit=20
            ),
            "keyset page 50% deep (--after)": lambda: broker.list_instances(after=deep, limit=20),
            "status FAILED, 50% deep (--after)": lambda: broker.list_instances(
                status="FAILED", after=deep, limit=20
            ),
        }
        results = {}
        print(f"{'page of 20':<36} {'median ms':>10} {'p95 ms':>8}")
        for name, call in cases.items():
            results[name] = timed(call)
            print(f"{name:<36} {results[name]['median_ms']:>10} {results[name]['p95_ms']:>8}")
    finally:
        broker.close()
    out = HERE / "results" / "listing.json"
    out.write_text(
        json.dumps({"instances": count, "fill_seconds": round(seconds, 1), "pages": results}, indent=2) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
