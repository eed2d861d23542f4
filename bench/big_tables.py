"""Do claims, reports and the instance listings stay cheap when the tables are big?

The claim walks a partial index of QUEUED steps and a report touches one instance's rows, so
neither should care how much finished history sits beside them; the listings page by keyset
and ``instances show`` reads one instance by its keys. This checks that on real sizes rather
than by argument: a bloated index, a plan that flips to a scan, or a statement that counts
history would only show at millions of rows.

Two fresh databases, each seeded from one real instance (a workflow of ten independent no-op
steps, dispatched, claimed and reported through the public API):

- small: about 1,000 finished step rows and 100 queued steps;
- big: 1,000,000 finished instances (10,000,000 step rows, created over the 30 days before
  the run, with the history rows the example wrote: none since a success is held by its
  step row) and 100,000 queued steps.

The history is copied with set-based ``INSERT ... SELECT ... FROM generate_series`` from the
example's rows, every column as the engine wrote it, only ids (UUIDv7, like ``ids.new_id``)
and timestamps (shifted by whole instances) changed; the queue is dispatched through
``dispatch_many``. Then ``VACUUM (ANALYZE)``, as autovacuum would have left a live database.
Both are measured alike, in alternating rounds (a shared machine's noise weighs on both):
claim (``get_step``), report (``report_step``, success), their sum per step, ``instances
list`` pages (first, RUNNING, SUCCEEDED, cursor pages, a cursor deep in history) and
``instances show`` (``get_instance`` + ``instance_events``) of random old instances. The
brokers keep 90 days (``retention``): pruning finds nothing, as on a deployment keeping this
history. Memory holds both databases: a warm server, not one reading from disk. It reports;
it asserts no timing.

    python bench/big_tables.py            # about 10 minutes; writes bench/results/big_tables.json
    python bench/big_tables.py --quick    # 10,000 instances: a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import DateTime, Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fuseline_bench  # noqa: E402  (its throwaway database)

from fuseline import Step, Workflow  # noqa: E402
from fuseline.broker import SqlBroker  # noqa: E402
from fuseline.broker.base import InstancePage, StepReport  # noqa: E402
from fuseline.broker.sql import models, pg_statements  # noqa: E402
from fuseline.states import Status  # noqa: E402

BIG, SMALL = "fuseline_big_tables_bench", "fuseline_big_tables_bench_small"
fuseline_bench.DATABASE = BIG  # never another benchmark's database
STEPS = 10
#: ``fuseline instances list``'s default ``--limit``.
PAGE = 20
RETENTION = timedelta(days=90)
SPAN = timedelta(days=30)
TABLES = (models.instances, models.steps, models.events)
PAGES = {
    "list_first_page": InstancePage(limit=PAGE),
    "list_running_page": InstancePage(status=Status.RUNNING, limit=PAGE),
    "list_succeeded_page": InstancePage(status=Status.SUCCEEDED, limit=PAGE),
}
ROUNDS = 6  # measuring rounds per database, alternating between them


class Noop(Step):
    def run_step(self) -> None:
        return None


WORKFLOW = Workflow([Noop() for _ in range(STEPS)], workflow_id="bench-big-tables", version="1")
SCHEMA = WORKFLOW.to_schema()


def fresh(name: str) -> tuple[str, str]:
    """A fresh migrated database: (SqlBroker URL, psycopg DSN)."""
    fuseline_bench.DATABASE = name
    url = fuseline_bench.fresh_postgres()
    return url, url.replace("postgresql+psycopg", "postgresql")


def drop(name: str) -> None:
    with psycopg.connect(fuseline_bench.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def broker_on(url: str) -> SqlBroker:
    return SqlBroker(url, retention=RETENTION)


def success(a: Any) -> StepReport:
    """The report a worker sends for a step that returned None (``engines.assignment``)."""
    return StepReport(
        a.workflow_id, a.instance_id, a.step_name, Status.SUCCEEDED, None, a.attempt, None, a.version
    )


def run_example(url: str) -> str:
    """One instance dispatched, claimed and reported to its end: the rows the bulk copies."""
    broker = broker_on(url)
    try:
        worker = broker.register_worker([SCHEMA])
        (instance_id,) = broker.dispatch_many(SCHEMA, [{}])
        while (assignment := broker.get_step(worker)) is not None:
            broker.report_step(worker, success(assignment))
        if broker.get_instance(instance_id).status != Status.SUCCEEDED:
            raise RuntimeError("the example instance did not succeed")
    finally:
        broker.close()
    return instance_id


# -- the bulk load --------------------------------------------------------------------------
#: Instance ``g``'s id: a UUIDv7 of its created_at (ms), version 7, variant 10, the rest from
#: ``g`` (unique) and its md5 (as random-looking as ``new_id``'s bits).
_UUID7 = """CAST(lpad(to_hex(CAST(floor(extract(epoch FROM t.created) * 1000) AS bigint)), 12, '0')
    || '7' || substr(md5(g::text), 8, 3) || '8' || substr(md5(g::text), 1, 7) || lpad(to_hex(g), 8, '0')
    AS uuid)"""


def copy_statement(table: Table) -> str:
    """Instances ``%(lo)s..%(hi)s``, each a copy of the example's rows of ``table``: its own id,
    created ``%(start)s + (g - 1) * %(every)s``, every other time shifted by as much."""
    columns, values = [], []
    for column in table.columns:
        name = column.name
        if name == "id" and table is not models.instances:
            continue  # a serial: the sequence numbers the rows, as for the engine's inserts
        columns.append(f'"{name}"')
        if name in ("id", "instance_id"):
            values.append("n.iid")
        elif isinstance(column.type, DateTime):
            values.append(f'e."{name}" + (t.created - x.created_at)')
        else:
            values.append(f'e."{name}"')
    key = "id" if table is models.instances else "instance_id"
    order = "g" if table is models.instances else "g, e.id"
    return f"""INSERT INTO {table.name} ({", ".join(columns)})
        SELECT {", ".join(values)}
          FROM generate_series(CAST(%(lo)s AS bigint), CAST(%(hi)s AS bigint)) AS g
         CROSS JOIN LATERAL (SELECT CAST(%(start)s AS timestamptz) + (g - 1) * CAST(%(every)s AS interval)
                             AS created) AS t
         CROSS JOIN LATERAL (SELECT {_UUID7} AS iid) AS n
         CROSS JOIN (SELECT created_at FROM fuseline_instances WHERE id = %(example)s) AS x
          JOIN {table.name} AS e ON e.{key} = %(example)s
         ORDER BY {order}"""


def load_history(dsn: str, example: str, instances: int, chunk: int) -> float:
    """``instances`` finished instances copied from ``example``, ``chunk`` per transaction."""
    began = time.perf_counter()
    statements = [copy_statement(table) for table in TABLES]
    with psycopg.connect(dsn) as conn:
        created = conn.execute(
            "SELECT created_at FROM fuseline_instances WHERE id = %s", (example,)
        ).fetchone()
        start = created[0] - SPAN - timedelta(hours=1)  # all older than the example
        every = SPAN / instances
        for lo in range(1, instances + 1, chunk):
            hi = min(instances, lo + chunk - 1)
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute("SET LOCAL work_mem = '256MB'")
                params = {"lo": lo, "hi": hi, "start": start, "every": every, "example": example}
                for sql in statements:
                    conn.execute(sql, params)
            print(f"  {hi:>9,} instances loaded  ({time.perf_counter() - began:.0f} s)", flush=True)
    return time.perf_counter() - began


def queue_backlog(url: str, steps: int) -> None:
    """``steps`` QUEUED steps (``steps // 10`` instances), dispatched 1,000 instances at a time."""
    broker = broker_on(url)
    try:
        count = steps // STEPS
        for offset in range(0, count, 1000):
            broker.dispatch_many(SCHEMA, [{} for _ in range(min(1000, count - offset))])
    finally:
        broker.close()


def vacuum(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sum(timed(lambda t=t: conn.execute(f"VACUUM (ANALYZE) {t.name}"))[0] for t in TABLES) / 1000


def sizes(dsn: str) -> dict[str, Any]:
    """MB on disk: each table with its indexes and TOAST, its heap, and each index."""
    with psycopg.connect(dsn) as conn:
        out: dict[str, Any] = {}
        for table in TABLES:
            total, heap = conn.execute(
                "SELECT pg_total_relation_size(%s), pg_relation_size(%s)", (table.name, table.name)
            ).fetchone()
            indexes = conn.execute(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
                " WHERE indrelid = %s::regclass ORDER BY 2 DESC",
                (table.name,),
            ).fetchall()
            out[table.name] = {
                "total_mb": round(total / 2**20, 1),
                "heap_mb": round(heap / 2**20, 1),
                "indexes_mb": {name: round(size / 2**20, 1) for name, size in indexes},
            }
    return out


def event_shape(broker: SqlBroker, instance_id: str) -> list[tuple[Any, ...]]:
    """The history lines, timed from the first: equal for an instance and its copies."""
    lines = broker.instance_events(instance_id)
    return [(e.kind, e.step_name, e.attempt, e.worker_id, e.detail, e.at - lines[0].at) for e in lines]


def check(url: str, dsn: str, example: str, instances: int, queued: int) -> None:
    """Fail loudly unless the database holds what was meant, read back as the engine's own."""
    with psycopg.connect(dsn) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM fuseline_instances WHERE status = 'SUCCEEDED'),"
            " (SELECT count(*) FROM fuseline_steps WHERE state = 'SUCCEEDED'),"
            " (SELECT count(*) FROM fuseline_events),"
            " (SELECT count(*) FROM fuseline_steps WHERE state = 'QUEUED')"
        ).fetchone()
        (events_each,) = conn.execute(
            "SELECT count(*) FROM fuseline_events WHERE instance_id = %s", (example,)
        ).fetchone()
        old = conn.execute(
            "SELECT id FROM fuseline_instances WHERE status = 'SUCCEEDED' AND id <> %s LIMIT 1", (example,)
        ).fetchone()[0]
    finished = instances + 1
    wanted = (finished, finished * STEPS, finished * events_each, queued)
    if tuple(counts) != wanted:
        raise RuntimeError(f"rows (instances, finished steps, events, queued) {counts}, not {wanted}")
    broker = broker_on(url)
    try:
        info = broker.get_instance(str(old))
        if info.status != Status.SUCCEEDED or len(info.steps) != STEPS or info.steps_done != STEPS:
            raise RuntimeError(f"bulk-loaded instance {old} reads back as {info}")
        if event_shape(broker, str(old)) != event_shape(broker, example):
            raise RuntimeError(f"the history of {old} differs from the example's")
    finally:
        broker.close()


def build(
    name: str, instances: int, queued: int, chunk: int, prepare: Callable[[str], None] | None = None
) -> tuple[str, str, str, dict[str, Any]]:
    """A fresh database with the example, ``instances`` copies and ``queued`` queued steps;
    ``prepare(dsn)`` first changes the migrated schema (``partitioned_events.py``'s tables)."""
    began = time.perf_counter()
    url, dsn = fresh(name)
    if prepare is not None:
        prepare(dsn)
    example = run_example(url)
    history_s = load_history(dsn, example, instances, chunk)
    mark = time.perf_counter()
    queue_backlog(url, queued)
    queue_s = time.perf_counter() - mark
    vacuum_s = vacuum(dsn)
    check(url, dsn, example, instances, queued)
    load = {
        "instances": instances + 1,
        "finished_steps": (instances + 1) * STEPS,
        "queued_steps": queued,
        "history_s": round(history_s, 1),
        "queue_s": round(queue_s, 1),
        "vacuum_analyze_s": round(vacuum_s, 1),
        "total_s": round(time.perf_counter() - began, 1),
        "sizes": sizes(dsn),
    }
    return url, dsn, example, load


# -- the measurements -----------------------------------------------------------------------
def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 3),
        "samples": len(ordered),
    }


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = call()
    return (time.perf_counter() - began) * 1000, value


def one_round(
    broker: SqlBroker, worker: str, old: list[str], count: int, times: dict[str, list[float]]
) -> None:
    """``count`` samples of each figure, appended to ``times``. A claim takes a queued step and
    its report succeeds it; one instance dispatched (untimed) every ten claims keeps the queue
    at its size. Then ``instances list`` pages (pages 2..6 by following "next page: --after
    ID" from the first) and ``instances show`` of old instances."""
    for n in range(count):
        if n % STEPS == 0:
            broker.dispatch_many(SCHEMA, [{}])
        claim_ms, assignment = timed(lambda: broker.get_step(worker))
        if assignment is None:
            raise RuntimeError("a claim found no queued step")
        report_ms, _ = timed(lambda a=assignment: broker.report_step(worker, success(a)))
        times["claim"].append(claim_ms)
        times["report"].append(report_ms)
        times["claim_report"].append(claim_ms + report_ms)
    for name, page in PAGES.items():
        times[name].extend(timed(lambda p=page: broker.instances_page(p))[0] for _ in range(count))
    for i in old:
        times["list_after_old_instance"].append(
            timed(lambda i=i: broker.instances_page(InstancePage(limit=PAGE, after=i)))[0]
        )
        times["show_old_instance"].append(
            timed(lambda i=i: (broker.get_instance(i), broker.instance_events(i)))[0]
        )
    for _ in range(max(1, count // 5)):
        last = broker.instances_page(PAGES["list_first_page"])[-1].instance_id
        for _ in range(5):
            ms, page = timed(lambda last=last: broker.instances_page(InstancePage(limit=PAGE, after=last)))
            times["list_cursor_pages_2_to_6"].append(ms)
            last = page[-1].instance_id


def explain(dsn: str, worker: str, old: str) -> dict[str, Any]:
    """Top plan node, time and buffers of the claim statement (rolled back) and of the reads of
    ``instances show`` (hand-written twins of the Core statements)."""
    claim_params = {
        "p_worker_id": worker, "p_lease_seconds": 30.0, "p_dead_after": 60.0, "p_seen_every": 10.0,
        "p_workflow_id": SCHEMA.workflow_id, "p_version": SCHEMA.version, "p_queue": "default",
        "p_floor": None,
    }  # fmt: skip
    one = {"i": old}
    newest = f"SELECT * FROM fuseline_instances ORDER BY created_at DESC, id DESC LIMIT {PAGE}"
    statements = {
        "claim": (pg_statements.step_claim_one_workflow, claim_params),
        "steps_of_instance": ("SELECT * FROM fuseline_steps WHERE instance_id IN (%(i)s) ORDER BY id", one),
        "events_of_instance": ("SELECT * FROM fuseline_events WHERE instance_id = %(i)s ORDER BY id", one),
        "list_first_page": (newest, {}),
    }  # fmt: skip
    out: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        cur = psycopg.ClientCursor(conn)
        for name, (sql, params) in statements.items():
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
            (plan,) = cur.fetchone()[0]
            top = plan["Plan"]
            out[name] = {
                "top_node": top["Node Type"],
                "execution_ms": plan["Execution Time"],
                "shared_hit": top.get("Shared Hit Blocks", 0),
                "shared_read": top.get("Shared Read Blocks", 0),
            }
            conn.rollback()
    return out


def old_instances(dsn: str, example: str, count: int) -> list[str]:
    """``count`` random bulk-loaded instances (repeated if there are fewer)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id FROM fuseline_instances WHERE status = 'SUCCEEDED' AND id <> %s"
            " ORDER BY random() LIMIT %s",
            (example, count),
        ).fetchall()
    return [str(r[0]) for r in rows * (1 + count // len(rows))][:count]


def measure(sides: dict[str, tuple[str, str, str]], samples: int, rounds: int) -> dict[str, Any]:
    """Both databases measured in alternating rounds (a warm-up round each first, dropped), so
    whatever else the machine does meanwhile weighs on both alike."""
    per_round = max(STEPS, samples // rounds)
    brokers = {label: broker_on(url) for label, (url, _, _) in sides.items()}
    try:
        workers = {label: broker.register_worker([SCHEMA]) for label, broker in brokers.items()}
        old = {
            label: old_instances(dsn, ex, per_round * (rounds + 1)) for label, (_, dsn, ex) in sides.items()
        }
        times: dict[str, dict[str, list[float]]] = {label: defaultdict(list) for label in sides}
        for r in range(rounds + 1):
            for label in sorted(sides, reverse=r % 2 == 1):
                into = times[label] if r else defaultdict(list)
                mine = old[label][r * per_round : (r + 1) * per_round]
                one_round(brokers[label], workers[label], mine, per_round, into)
    finally:
        for broker in brokers.values():
            broker.close()
    figures: dict[str, Any] = {}
    for label, (_, dsn, _) in sides.items():
        figures[label] = {name: stats(values) for name, values in times[label].items()}
        figures[label]["explain"] = explain(dsn, workers[label], old[label][0])
    return figures


# -- the run --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100x less history and queue: a smoke run")
    parser.add_argument("--instances", type=int, help="finished instances in the big database")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--out", default=str(HERE / "results" / "big_tables.json"))
    args = parser.parse_args()
    instances = args.instances or (10_000 if args.quick else 1_000_000)
    queued = max(STEPS, instances // 10)  # queued steps: 100,000 beside 1,000,000 instances
    results: dict[str, Any] = {"steps_per_instance": STEPS, "page_size": PAGE}

    def emit(name: str, value: dict[str, Any]) -> None:
        print(json.dumps({"figure": name, **value}), flush=True)

    try:
        sides = {}
        for label, name, count, queue in (("small", SMALL, 100, 100), ("big", BIG, instances, queued)):
            print(f"{label}: loading {count:,} finished instances and {queue:,} queued steps", flush=True)
            url, dsn, example, load = build(name, count, queue, chunk=100_000)
            sides[label] = (url, dsn, example)
            results[f"{label}_load"] = load
            emit(f"{label}_load", load)
        results.update(measure(sides, args.samples, ROUNDS))
        for label in sides:
            for figure, value in results[label].items():
                emit(f"{label}_{figure}", value)
    finally:
        drop(SMALL)
        drop(BIG)
    ratios = {
        f"{figure}_{q}": round(results["big"][figure][f"{q}_ms"] / results["small"][figure][f"{q}_ms"], 2)
        for figure in ("claim", "report", "claim_report")
        for q in ("p50", "p99")
    }
    reads = {
        figure: value for figure, value in results["big"].items() if figure.startswith(("list_", "show_"))
    }
    results["ratios_big_over_small"] = ratios
    results["verdict"] = {
        "within_1_3x": all(ratios[f"{f}_p50"] <= 1.3 for f in ("claim", "report", "claim_report")),
        "under_50ms": all(value["p50_ms"] < 50 for value in reads.values()),
        "under_50ms_p99": all(value["p99_ms"] < 50 for value in reads.values()),
        "judged_on": "median ratios of claim, report, claim+report; medians (p99) of list and show",
    }
    emit("ratios_big_over_small", ratios)
    emit("verdict", results["verdict"])
    fuseline_bench.write_results(args.out, results)


if __name__ == "__main__":
    main()
