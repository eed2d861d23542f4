"""What one step costs PostgreSQL in writes: WAL bytes, rows and commits per step of a drain.

Every write a step makes is paid for in WAL, in dead tuples for vacuum, in
index entries and in commits; throughput on a busy primary, and how long an
old snapshot hurts, follow from these counts. For each workload a fresh
database gets its backlog, is vacuumed and checkpointed, and then worker
processes drain it (``fuseline_bench.run_workers``). Around the drain:

- WAL bytes from ``pg_current_wal_lsn()`` (the whole cluster: run it on a
  quiet server, nothing else writing);
- rows inserted, updated (of which HOT) and deleted per table, from
  ``pg_stat_user_tables`` (this database only, exact once the workers have
  exited and flushed their statistics);
- commits from ``pg_stat_database``;
- CPU seconds of every ``postgres`` process (from ``/proc``, so the whole
  server again) and of the worker processes (``RUSAGE_CHILDREN``);
- where the WAL of the drain went, by table and index (``pg_walinspect``:
  the records that touch this database's relations, so other databases do
  not count): which writes are worth removing.

Dispatch is counted apart (per instance), with the same counters.

    python bench/write_cost.py [--quick] [--out bench/results/writes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from fuseline_bench import (
    DATABASE,
    HERE,
    WORKFLOWS,
    checkpoint,
    dispatch_backlog,
    fresh_postgres,
    run_workers,
    write_results,
)

#: (figure name, workflow, instances at full size, worker processes, prefetch)
WORKLOADS = (
    ("noop_c4", "noop", 5_000, 4, 1),
    ("noop_prefetch10_c4", "noop", 5_000, 4, 10),
    ("chain3_c4", "chain", 2_000, 4, 1),
)


@dataclass(frozen=True)
class Counters:
    wal_lsn: str
    commits: int
    #: table -> (inserted, updated, hot updated, deleted)
    tables: dict[str, tuple[int, int, int, int]]


def read_counters(url: str) -> Counters:
    """The counters now; waits for the statistics of exited backends to show up first."""
    time.sleep(1.2)  # backends flush their statistics at most once a second, and at exit
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        commits = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (DATABASE,)
        ).fetchone()[0]
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables"
            " WHERE relname LIKE 'fuseline%%'"
        ).fetchall()
    return Counters(lsn, commits, {name: (ins, upd, hot, dele) for name, ins, upd, hot, dele in rows})


def postgres_cpu() -> dict[int, float]:
    """User + system CPU seconds of each live ``postgres`` process on this machine, by pid."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name == "postgres":
            seconds[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


class PostgresCpuSampler:
    """PostgreSQL's CPU seconds spent while it runs, sampled every 20 ms.

    The workers' backends exit with the workers, taking their counters with
    them, so the last reading of each process is kept; a process first seen
    while sampling counts from zero (its whole life falls in the window).
    """

    def __init__(self) -> None:
        self._first = postgres_cpu()
        self._last = dict(self._first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._last.update(postgres_cpu())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._last.update(postgres_cpu())
        return sum(last - self._first.get(pid, 0.0) for pid, last in self._last.items())


def workers_cpu_seconds() -> float:
    """CPU seconds of this process's ended children (the drain's worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cost(url: str, before: Counters, after: Counters, units: int) -> dict[str, Any]:
    """Per-unit differences between two readings (tables that did not change are left out)."""
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        wal = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (after.wal_lsn, before.wal_lsn)).fetchone()[0]
    per_table: dict[str, dict[str, float]] = {}
    totals = [0, 0, 0, 0]
    for table, now in sorted(after.tables.items()):
        then = before.tables.get(table, (0, 0, 0, 0))
        delta = [a - b for a, b in zip(now, then, strict=True)]
        if any(delta):
            per_table[table] = {
                kind: round(d / units, 2)
                for kind, d in zip(("inserted", "updated", "hot", "deleted"), delta, strict=True)
            }
            totals = [t + d for t, d in zip(totals, delta, strict=True)]
    return {
        "wal_bytes": round(float(wal) / units),
        "rows_written": round((totals[0] + totals[1] + totals[3]) / units, 2),
        "commits": round((after.commits - before.commits) / units, 2),
        "tables": per_table,
    }


def wal_by_relation(url: str, start: str, end: str, units: int) -> dict[str, int]:
    """WAL bytes per unit by relation of this database (heap and index records; full-page
    images included), largest first."""
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        (database,) = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        names = dict(
            conn.execute(
                "SELECT pg_relation_filenode(oid)::text, relname FROM pg_class"
                " WHERE pg_relation_filenode(oid) IS NOT NULL"
            ).fetchall()
        )
        records = conn.execute(
            "SELECT record_length, block_ref FROM pg_get_wal_records_info(%s, %s)", (start, end)
        ).fetchall()
    by_relation: dict[str, int] = {}
    for length, block_ref in records:
        found = re.search(rf"rel \d+/{database}/(\d+)", block_ref or "")
        if found:
            name = names.get(found.group(1), found.group(1))
            by_relation[name] = by_relation.get(name, 0) + length
    return {name: round(total / units) for name, total in sorted(by_relation.items(), key=lambda kv: -kv[1])}


def measure(workflow: str, instances: int, processes: int, prefetch: int) -> dict[str, Any]:
    url = fresh_postgres()
    checkpoint(url)
    start = read_counters(url)
    dispatch_backlog(url, workflow, instances)
    dispatched = read_counters(url)
    checkpoint(url)  # the drain starts, like the drain figures, just after a checkpoint
    drained_from = read_counters(url)
    sampler, workers_before = PostgresCpuSampler(), workers_cpu_seconds()
    seconds = run_workers(url, workflow, processes, prefetch)
    postgres_seconds, workers_seconds = sampler.stop(), workers_cpu_seconds() - workers_before
    end = read_counters(url)
    steps = instances * len(WORKFLOWS[workflow].steps)
    per_step = cost(url, drained_from, end, steps)
    per_step["wal_by_relation"] = wal_by_relation(url, drained_from.wal_lsn, end.wal_lsn, steps)
    per_step["postgres_cpu_ms"] = round(1000 * postgres_seconds / steps, 3)
    per_step["workers_cpu_ms"] = round(1000 * workers_seconds / steps, 3)
    return {
        "steps": steps,
        "seconds": round(seconds, 3),
        "per_step": per_step,
        "dispatch_per_instance": cost(url, start, dispatched, instances),
    }


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg", "postgresql")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes: a smoke run")
    parser.add_argument("--out", default=str(HERE / "results" / "writes.json"))
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    for name, workflow, instances, processes, prefetch in WORKLOADS:
        size = instances // 10 if args.quick else instances
        figures[name] = measure(workflow, size, processes, prefetch)
        step = figures[name]["per_step"]
        print(
            f"{name:<22} per step: {step['wal_bytes']:>6} WAL bytes, {step['rows_written']:>5} rows,"
            f" {step['commits']:>5} commits, CPU {step['postgres_cpu_ms']} ms in PostgreSQL and"
            f" {step['workers_cpu_ms']} ms in workers  {json.dumps(step['tables'])}",
            flush=True,
        )
        top = ", ".join(f"{rel} {size}" for rel, size in list(step["wal_by_relation"].items())[:8])
        print(f"{'':<22} WAL bytes per step by relation: {top}", flush=True)
    write_results(args.out, figures)


if __name__ == "__main__":
    main()
