"""Native partitioning of the history, tried: what it costs the hot path and ``instances show``,
and what it saves retention.

Events are insert-only and every statement of the engine reads them by ``instance_id``, so the
history is the first table worth partitioning (``docs/scaling.md``, "Past one primary"). Four
databases, each loaded as ``big_tables.py`` loads its big one (finished ten-step instances
spread over the 30 days before the run, each step with its one ending event, plus a queue):

- ``plain``: the tables as the migrations make them;
- ``events_by_instance``: ``fuseline_events`` ``PARTITION BY RANGE (instance_id)``, one
  partition per day. Instance ids are UUIDv7, whose first 48 bits are the creation time in
  milliseconds, and UUIDs compare bytewise, so a range of ids is a range of creation times: an
  instance's whole history lands in one partition, and ``WHERE instance_id = ...``, the form of
  every read, prunes to it;
- ``events_by_time``: ``PARTITION BY RANGE (at)``, one partition per day: the textbook choice,
  but a read by ``instance_id`` must probe every partition's index, and one instance's history
  may straddle two partitions;
- ``steps_by_instance``: events and ``fuseline_steps`` both partitioned by day of instance id,
  open steps included. The claim then walks the queued-steps index of every partition, and it
  updates the step it picked by ``id`` alone, which no partition bound prunes.

The partitioned tables are built after the migrations (each original dropped, its sequence
kept) with the same columns, defaults, indexes and foreign keys; the primary key becomes
``(instance_id, id)`` or ``(id, at)``, since PostgreSQL requires the partition key in it, and a
partitioned steps table gets a plain index on ``id``. A default partition takes whatever falls
outside the days. Measured in alternating rounds with ``big_tables.measure``: claim, report
(which writes the success event), ``instances list`` and ``instances show``. Then retention of
the oldest day's history: a partitioned table's day detached and dropped, the other tables'
rows of that day's instances deleted 500 rows per transaction, as the pruner does, and
vacuumed. Time and WAL bytes of each. It reports; it asserts no timing.

    python bench/partitioned_events.py           # 300,000 instances each, about 12 minutes
    python bench/partitioned_events.py --quick   # 3,000 instances each: a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import big_tables
import psycopg
from big_tables import STEPS, build, drop, measure

HERE = Path(__file__).resolve().parent
SIDES = ("plain", "events_by_instance", "events_by_time", "steps_by_instance")
NAMES = {side: f"fuseline_partition_bench_{side}" for side in SIDES}
EVENTS_TABLE, STEPS_TABLE = "fuseline_events", "fuseline_steps"
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


def by_time(side: str) -> bool:
    return side == "events_by_time"


def bound(side: str, moment: datetime) -> str:
    return f"'{moment.isoformat()}'" if by_time(side) else f"'{first_id_of(moment)}'"


def partitioned_tables(side: str) -> tuple[str, ...]:
    return {"plain": (), "steps_by_instance": (EVENTS_TABLE, STEPS_TABLE)}.get(side, (EVENTS_TABLE,))


def partition(side: str) -> Callable[[str], None]:
    """``prepare`` for ``big_tables.build``: the side's tables rebuilt partitioned by day, with
    the same columns, defaults, indexes and foreign keys, the sequence of ``id`` kept."""
    key, primary = ("at", "id, at") if by_time(side) else ("instance_id", "instance_id, id")

    def prepare(dsn: str) -> None:
        with psycopg.connect(dsn) as conn:
            for table in partitioned_tables(side):
                old = f"{table}_unpartitioned"
                conn.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
                conn.execute(f"ALTER TABLE {table} RENAME TO {old}")
                indexes = conn.execute(
                    "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass"
                    " AND NOT indisprimary",
                    (old,),
                ).fetchall()
                keys = conn.execute(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
                    " AND contype = 'f'",
                    (old,),
                ).fetchall()
                conn.execute(
                    f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE ({key})"
                )
                conn.execute(f"DROP TABLE {old}")
                conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({primary})")
                for (definition,) in indexes:
                    if f"({primary})" not in definition:  # the new primary key serves it
                        conn.execute(definition.replace(old, table))
                for (definition,) in keys:
                    conn.execute(f"ALTER TABLE {table} ADD {definition}")
                if table == STEPS_TABLE:  # claims and repairs update a step by ``id`` alone
                    conn.execute(f"CREATE INDEX ix_{table}_id ON {table} (id)")
                conn.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
                for day in range(-DAYS_BACK, DAYS_AHEAD):
                    low, high = bound(side, day_start(day)), bound(side, day_start(day + 1))
                    conn.execute(
                        f"CREATE TABLE {table}_d{day + DAYS_BACK:02d} PARTITION OF {table}"
                        f" FOR VALUES FROM ({low}) TO ({high})"
                    )
                conn.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")

    return prepare


def layout(dsn: str, table: str) -> dict[str, Any]:
    """Partitions holding rows, the rows in the default one, and MB on disk (with indexes)."""
    with psycopg.connect(dsn) as conn:
        tree = "SELECT relid::regclass::text, pg_total_relation_size(relid) FROM pg_partition_tree(%s)"
        parts = conn.execute(tree + " WHERE isleaf", (table,)).fetchall()
        if not parts:  # not partitioned: the table itself
            parts = [(table, conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0])]
        rows = {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name, _ in parts}
    return {
        "partitions_with_rows": sum(1 for n in rows.values() if n),
        "rows_in_default": rows.get(f"{table}_default", 0),
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


def day_partition(table: str, low: datetime) -> str:
    return f"{table}_d{(low - day_start(-DAYS_BACK)).days:02d}"


def prune_one_day(dsn: str, side: str, low: datetime, high: datetime) -> dict[str, Any]:
    """The history of the instances created in ``[low, high)``: each partitioned table's day
    detached and dropped; each other one's rows deleted ``BATCH_ROWS`` per transaction (by
    instance, as the pruner does), then vacuumed, which makes their space reusable."""
    dropped = partitioned_tables(side)
    deleted_tables = [t for t in (EVENTS_TABLE, STEPS_TABLE) if t not in dropped]
    figures: dict[str, Any] = {"dropped": list(dropped), "deleted": deleted_tables}
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM fuseline_instances WHERE created_at >= %s AND created_at < %s ORDER BY id",
                (low, high),
            )
        ]
        rows = {
            t: conn.execute(f"SELECT count(*) FROM {day_partition(t, low)}").fetchone()[0] for t in dropped
        }
        per_batch = max(1, BATCH_ROWS // (STEPS * max(1, len(deleted_tables))))

        def detach_and_drop() -> None:
            for table in dropped:
                conn.execute(f"ALTER TABLE {table} DETACH PARTITION {day_partition(table, low)}")
                conn.execute(f"DROP TABLE {day_partition(table, low)}")

        def delete() -> None:
            if not deleted_tables:
                return
            for at in range(0, len(ids), per_batch):
                with conn.transaction():
                    for table in deleted_tables:
                        batch = ids[at : at + per_batch]
                        cur = conn.execute(f"DELETE FROM {table} WHERE instance_id = ANY(%s)", (batch,))
                        rows[table] = rows.get(table, 0) + cur.rowcount

        def vacuum() -> None:
            for table in deleted_tables:
                conn.execute(f"VACUUM {table}")

        phases = {"drop": detach_and_drop, "delete": delete, "vacuum": vacuum}
        for phase, work in phases.items():
            figures[phase] = wal_and_time(conn, work)
    figures["rows"] = rows
    figures["seconds"] = round(sum(figures[phase]["seconds"] for phase in phases), 3)
    figures["wal_mb"] = round(sum(figures[phase]["wal_mb"] for phase in phases), 2)
    return figures


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
            del load["sizes"]
            load.update({table: layout(dsn, table) for table in (EVENTS_TABLE, STEPS_TABLE)})
            results[f"{side}_load"] = load
            emit(f"{side}_load", load)
        measured = measure(sides, args.samples, big_tables.ROUNDS)
        for side in sides:
            results[side] = measured[side]
            emit(side, results[side])
        low, high = oldest_day(sides["plain"][1])
        for side, (_, dsn, _) in sides.items():
            pruned = prune_one_day(dsn, side, low, high)
            results[f"{side}_retention_of_one_day"] = pruned
            emit(f"{side}_retention_of_one_day", pruned)
    finally:
        for name in NAMES.values():
            drop(name)
    figures = ("claim", "report", "claim_report", "show_old_instance", "list_first_page")
    results["ratios_over_plain"] = {
        side: {f: round(results[side][f]["p50_ms"] / results["plain"][f]["p50_ms"], 2) for f in figures}
        for side in sides
        if side != "plain"
    }
    emit("ratios_over_plain", results["ratios_over_plain"])
    big_tables.fuseline_bench.write_results(args.out, results)


if __name__ == "__main__":
    main()
