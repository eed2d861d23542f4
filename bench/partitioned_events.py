"""Native partitioning of the history (``fuseline_events``), tried: what it costs the hot path and
``instances show``, and what it saves retention.

Events are insert-only and every statement of the engine reads them by ``instance_id``, so the
history is the first table worth partitioning (``docs/scaling.md``, "Past one primary"). Three
databases, each loaded as ``big_tables.py`` loads its big one (finished ten-step instances
spread over the 30 days before the run, each step with its one ending event, plus a queue):

- ``plain``: the table as the migrations make it;
- ``by_instance``: ``PARTITION BY RANGE (instance_id)``, one partition per day. Instance ids
  are UUIDv7, whose first 48 bits are the creation time in milliseconds, and UUIDs compare
  bytewise, so a range of ids is a range of creation times: an instance's whole history lands
  in one partition, and ``WHERE instance_id = ...``, the form of every read, prunes to it;
- ``by_time``: ``PARTITION BY RANGE (at)``, one partition per day: the textbook choice, but a
  read by ``instance_id`` must probe every partition's index, and one instance's history may
  straddle two partitions.

The partitioned tables are built after the migrations (the original dropped, its sequence
kept) with the same columns and indexes; the primary key becomes ``(instance_id, id)`` or
``(id, at)``, since PostgreSQL requires the partition key in it. A default partition takes
whatever falls outside the days. Measured in alternating rounds with ``big_tables.measure``:
claim, report (which writes the success event), ``instances list`` and ``instances show``.
Then retention of the oldest day's history: on ``plain``, the events of that day's instances
deleted 500 rows per transaction, as the pruner does, followed by the ``VACUUM`` that makes
their space reusable; on the partitioned tables, ``DETACH PARTITION`` and ``DROP TABLE`` of the
oldest day. Time and WAL bytes of each. It reports; it asserts no timing.

    python bench/partitioned_events.py           # 300,000 instances each, about 10 minutes
    python bench/partitioned_events.py --quick   # 3,000 instances each: a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import big_tables
import psycopg
from big_tables import STEPS, build, drop, measure

HERE = Path(__file__).resolve().parent
NAMES = {side: f"fuseline_partition_bench_{side}" for side in ("plain", "by_instance", "by_time")}
#: Days of partitions before and after the run's day (the history spans the 30 days before it).
DAYS_BACK, DAYS_AHEAD = 32, 2
#: Rows per retention transaction (``retention.ROWS_PER_BATCH``).
BATCH_ROWS = 500


def day_start(days_from_today: int) -> datetime:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days_from_today)


def first_id_of(moment: datetime) -> str:
    """The smallest UUIDv7 of ``moment``'s millisecond: the lower bound of that moment's ids."""
    ms = int(moment.timestamp() * 1000)
    return str(uuid.UUID(hex=f"{ms:012x}" + "0" * 20))


def bound(side: str, moment: datetime) -> str:
    return f"'{first_id_of(moment)}'" if side == "by_instance" else f"'{moment.isoformat()}'"


def partition(side: str) -> Any:
    """``prepare`` for ``big_tables.build``: ``fuseline_events`` rebuilt partitioned by day."""
    key, primary = ("instance_id", "instance_id, id") if side == "by_instance" else ("at", "id, at")

    def prepare(dsn: str) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("ALTER SEQUENCE fuseline_events_id_seq OWNED BY NONE")
            conn.execute("ALTER TABLE fuseline_events RENAME TO fuseline_events_unpartitioned")
            conn.execute(
                "CREATE TABLE fuseline_events (LIKE fuseline_events_unpartitioned INCLUDING DEFAULTS)"
                f" PARTITION BY RANGE ({key})"
            )
            conn.execute("DROP TABLE fuseline_events_unpartitioned")
            conn.execute(f"ALTER TABLE fuseline_events ADD PRIMARY KEY ({primary})")
            if side == "by_time":  # with the key (instance_id, id) it is already the primary key
                conn.execute(
                    "CREATE INDEX ix_fuseline_events_instance_id_id ON fuseline_events (instance_id, id)"
                )
            conn.execute("ALTER SEQUENCE fuseline_events_id_seq OWNED BY fuseline_events.id")
            for day in range(-DAYS_BACK, DAYS_AHEAD):
                low, high = bound(side, day_start(day)), bound(side, day_start(day + 1))
                conn.execute(
                    f"CREATE TABLE fuseline_events_d{day + DAYS_BACK:02d} PARTITION OF fuseline_events"
                    f" FOR VALUES FROM ({low}) TO ({high})"
                )
            conn.execute("CREATE TABLE fuseline_events_default PARTITION OF fuseline_events DEFAULT")

    return prepare


def events_layout(dsn: str) -> dict[str, Any]:
    """Partitions holding rows, the rows in the default one, and MB on disk (with indexes)."""
    with psycopg.connect(dsn) as conn:
        tree = "SELECT relid::regclass::text, pg_total_relation_size(relid) FROM pg_partition_tree(%s)"
        parts = conn.execute(tree + " WHERE isleaf", ("fuseline_events",)).fetchall()
        if not parts:  # not partitioned: the table itself
            parts = [
                (
                    "fuseline_events",
                    conn.execute("SELECT pg_total_relation_size('fuseline_events')").fetchone()[0],
                )
            ]
        rows = {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name, _ in parts}
    return {
        "partitions_with_rows": sum(1 for n in rows.values() if n),
        "rows_in_default": rows.get("fuseline_events_default", 0),
        "total_mb": round(sum(size for _, size in parts) / 2**20, 1),
    }


def wal_and_time(conn: psycopg.Connection, work: Any) -> dict[str, float]:
    lsn = "SELECT pg_current_wal_lsn()"
    before, began = conn.execute(lsn).fetchone()[0], time.perf_counter()
    work()
    seconds = time.perf_counter() - began
    after = conn.execute(lsn).fetchone()[0]
    wal = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (after, before)).fetchone()[0]
    return {"seconds": round(seconds, 3), "wal_mb": round(float(wal) / 2**20, 2)}


def oldest_day(dsn: str) -> tuple[datetime, datetime]:
    """The first whole day of the loaded history."""
    with psycopg.connect(dsn) as conn:
        first = conn.execute("SELECT min(created_at) FROM fuseline_instances").fetchone()[0]
    low = first.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        days=1
    )
    return low, low + timedelta(days=1)


def prune_by_delete(dsn: str, low: datetime, high: datetime) -> dict[str, Any]:
    """The events of the instances created in ``[low, high)``, deleted ``BATCH_ROWS`` per
    transaction (by instance, as the pruner does), then ``VACUUM`` to make the space reusable."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM fuseline_instances WHERE created_at >= %s AND created_at < %s ORDER BY id",
                (low, high),
            )
        ]
        per_batch = max(1, BATCH_ROWS // STEPS)
        deleted = 0

        def delete() -> None:
            nonlocal deleted
            for at in range(0, len(ids), per_batch):
                with conn.transaction():
                    cur = conn.execute(
                        "DELETE FROM fuseline_events WHERE instance_id = ANY(%s)", (ids[at : at + per_batch],)
                    )
                    deleted += cur.rowcount

        figures: dict[str, Any] = {"delete": wal_and_time(conn, delete), "rows": deleted}
        figures["vacuum"] = wal_and_time(conn, lambda: conn.execute("VACUUM fuseline_events"))
    return figures


def prune_by_drop(dsn: str, low: datetime) -> dict[str, Any]:
    """The oldest day's partition detached and dropped (its rows counted first)."""
    name = f"fuseline_events_d{(low - day_start(-DAYS_BACK)).days:02d}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]

        def detach_and_drop() -> None:
            conn.execute(f"ALTER TABLE fuseline_events DETACH PARTITION {name}")
            conn.execute(f"DROP TABLE {name}")

        return {"drop": wal_and_time(conn, detach_and_drop), "rows": rows, "partition": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100x less history: a smoke run")
    parser.add_argument("--instances", type=int, help="finished instances in each database")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default=str(HERE / "results" / "partitioned_events.json"))
    args = parser.parse_args()
    instances = args.instances or (3_000 if args.quick else 300_000)
    queued = max(STEPS, instances // 10)
    results: dict[str, Any] = {"instances": instances, "queued_steps": queued, "days": 30}

    def emit(name: str, value: dict[str, Any]) -> None:
        print(json.dumps({"figure": name, **value}), flush=True)

    sides: dict[str, tuple[str, str, str]] = {}
    try:
        for side, name in NAMES.items():
            print(f"{side}: loading {instances:,} finished instances and {queued:,} queued steps", flush=True)
            prepare = None if side == "plain" else partition(side)
            url, dsn, example, load = build(name, instances, queued, chunk=100_000, prepare=prepare)
            sides[side] = (url, dsn, example)
            load["events"] = events_layout(dsn)
            del load["sizes"]
            results[f"{side}_load"] = load
            emit(f"{side}_load", load)
        measured = measure(sides, args.samples, big_tables.ROUNDS)
        for side in sides:
            results[side] = {k: v for k, v in measured[side].items() if k != "explain"}
            emit(side, results[side])
        low, high = oldest_day(sides["plain"][1])
        for side, (_, dsn, _) in sides.items():
            pruned = prune_by_delete(dsn, low, high) if side == "plain" else prune_by_drop(dsn, low)
            results[f"{side}_retention_of_one_day"] = pruned
            emit(f"{side}_retention_of_one_day", pruned)
    finally:
        for name in NAMES.values():
            drop(name)
    figures = ("claim", "report", "claim_report", "show_old_instance", "list_first_page")
    results["ratios_over_plain"] = {
        side: {f: round(results[side][f]["p50_ms"] / results["plain"][f]["p50_ms"], 2) for f in figures}
        for side in ("by_instance", "by_time")
    }
    emit("ratios_over_plain", results["ratios_over_plain"])
    big_tables.fuseline_bench.write_results(args.out, results)


if __name__ == "__main__":
    main()
