"""Print fuseline's figures next to the peers' and the PostgreSQL ceiling, as ratios.

Reads ``bench/results/{fuseline,procrastinate,pgqueuer,dbos,pgbench}.json`` as
written by the same ``make bench`` run and prints a Markdown table. A ratio
is "fuseline is N times better": rate / rate, or time / time inverted.

``--runs DIR DIR DIR`` reads the results of several runs instead (each
directory a copy of ``bench/results`` after one run) and reports the median
of every figure; the ratios are then of the medians. Runs on this kind of
machine spread by 15-30 %, so one run alone says little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("procrastinate", "pgqueuer", "dbos")
#: The result directories to read: the latest run, or the runs given with ``--runs``.
SOURCES: list[Path] = [RESULTS]


def load(name: str) -> dict[str, Any]:
    paths = [d / f"{name}.json" for d in SOURCES]
    documents = [json.loads(path.read_text()) for path in paths if path.exists()]
    return median_of(documents) if documents else {}


def median_of(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The first document, with every number replaced by the median of the numbers found at the
    same place in all of them (a figure missing from a run is left out of its median)."""
    merged: dict[str, Any] = {}
    for key, value in documents[0].items():
        same = [d[key] for d in documents if key in d]
        if isinstance(value, dict):
            merged[key] = median_of([v for v in same if isinstance(v, dict)])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers = [v for v in same if isinstance(v, (int, float)) and not isinstance(v, bool)]
            middle = statistics.median(numbers)
            whole = all(isinstance(v, int) for v in numbers) and middle == int(middle)
            merged[key] = int(middle) if whole else middle
        else:
            merged[key] = value
    return merged


def dig(data: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data if isinstance(data, (int, float)) else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f} /s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.2f} s"


def ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "-"
    value = ours / theirs if higher_is_better else theirs / ours
    return f"{value:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", nargs="+", type=Path, help="result directories of several runs: report their medians"
    )
    args = parser.parse_args()
    if args.runs:
        missing = [str(d) for d in args.runs if not (d / "fuseline.json").exists()]
        if missing:
            print(f"no fuseline.json in {', '.join(missing)}", file=sys.stderr)
            return 1
        SOURCES[:] = args.runs
        print(f"Median of {len(args.runs)} runs.\n")
    fuseline = load("fuseline")
    peers = {name: load(name).get("figures", {}) for name in PEERS}
    ceiling = load("pgbench").get("figures", {})
    floor = load("pickup_floor")
    if not fuseline:
        print("no bench/results/fuseline.json: run bench/fuseline_bench.py first", file=sys.stderr)
        return 1
    sizes = fuseline.get("sizes", {})
    rows = [
        # label, fuseline value, unit, peer key, ceiling key, higher is better
        (
            "no-op drain, 1 worker",
            dig(fuseline, "pg_drain_noop_c1", "steps_per_s"),
            "/s",
            "drain_c1_per_s",
            "claim_then_complete_c1_per_s",
            True,
        ),
        (
            "no-op drain, 4 workers",
            dig(fuseline, "pg_drain_noop_c4", "steps_per_s"),
            "/s",
            "drain_c4_per_s",
            "claim_then_complete_c4_per_s",
            True,
        ),
        (
            f"{sizes.get('chains', 2000):,} chains of 3, 4 workers",
            dig(fuseline, "pg_drain_chain3_c4", "seconds"),
            "s",
            "chain3_2000_c4_s",
            None,
            False,
        ),
        (
            "no-op drain, 4 workers, batched claims (prefetch 10)",
            dig(fuseline, "pg_drain_noop_prefetch10_c4", "steps_per_s"),
            "/s",
            "drain_batched_per_s",
            "batch10_c4_per_s",
            True,
        ),
        ("idle pickup p50", dig(fuseline, "pg_pickup", "p50_ms"), "ms", "pickup_p50_ms", None, False),
        ("idle pickup p99", dig(fuseline, "pg_pickup", "p99_ms"), "ms", "pickup_p99_ms", None, False),
        (
            "dispatch one by one",
            dig(fuseline, "pg_dispatch", "one_by_one_per_s"),
            "/s",
            "enqueue_one_per_s",
            None,
            True,
        ),
        (
            "dispatch batched",
            dig(fuseline, "pg_dispatch", "batched_per_s"),
            "/s",
            "enqueue_batch_per_s",
            None,
            True,
        ),
    ]
    header = ["figure", "fuseline", *PEERS, "SQL ceiling", *(f"vs {p}" for p in PEERS), "% of ceiling"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for label, ours, unit, peer_key, ceiling_key, higher in rows:
        theirs = [dig(peers[p], peer_key) for p in PEERS]
        top = dig(ceiling, ceiling_key) if ceiling_key else None
        share = f"{100 * ours / top:.0f}%" if ours and top else "-"
        cells = [label, fmt(ours, unit), *(fmt(t, unit) for t in theirs), fmt(top, unit)]
        cells += [ratio(ours, t, higher) for t in theirs] + [share]
        print("| " + " | ".join(cells) + " |")
    extra = [
        ("chain of 3, 1 worker", fmt(dig(fuseline, "pg_drain_chain3_c1", "seconds"), "s")),
        (
            "no-op drain, 1 worker, --prefetch 10",
            fmt(dig(fuseline, "pg_drain_noop_prefetch10_c1", "steps_per_s"), "/s"),
        ),
        (
            "chains of 3, 4 workers, --prefetch 10",
            fmt(dig(fuseline, "pg_drain_chain3_prefetch10_c4", "seconds"), "s"),
        ),
        (
            "no-op drain, 4 workers, 5,000 instances on tables not analyzed yet (a new database)",
            fmt(dig(fuseline, "pg_drain_noop_unanalyzed_c4", "steps_per_s"), "/s"),
        ),
        (
            "no-op drain, 4 workers, 10,000 instances on tables last analyzed with nothing queued",
            fmt(dig(fuseline, "pg_drain_noop_stale_c4", "steps_per_s"), "/s"),
        ),
        (
            "no-op drain, 4 workers, SQL ceiling in one transaction",
            fmt(dig(ceiling, "claim_complete_1tx_c4_per_s"), "/s"),
        ),
        (
            "idle pickup split: the dispatch call (p50) / from its return to the step starting (p50, p99)",
            f"{fmt(dig(fuseline, 'pg_pickup', 'dispatch_call_p50_ms'), 'ms')} / "
            f"{fmt(dig(fuseline, 'pg_pickup', 'after_commit_p50_ms'), 'ms')}, "
            f"{fmt(dig(fuseline, 'pg_pickup', 'after_commit_p99_ms'), 'ms')}",
        ),
        (
            "idle pickup floor in raw SQL (durable insert + NOTIFY, LISTEN, claim), p50 / p99;"
            " fuseline's pickup in the same run (bench/pickup_floor.py)",
            f"{fmt(dig(floor, 'raw_pickup', 'pickup', 'p50_ms'), 'ms')} / "
            f"{fmt(dig(floor, 'raw_pickup', 'pickup', 'p99_ms'), 'ms')}; "
            f"{fmt(dig(floor, 'fuseline_pickup', 'p50_ms'), 'ms')} / "
            f"{fmt(dig(floor, 'fuseline_pickup', 'p99_ms'), 'ms')}",
        ),
        (
            "durable one-row insert alone, back to back / 30-70 ms apart (p50)",
            f"{fmt(dig(floor, 'durable_insert', 'back_to_back', 'p50_ms'), 'ms')} / "
            f"{fmt(dig(floor, 'durable_insert', 'spaced', 'p50_ms'), 'ms')}",
        ),
        (
            "pickup with --no-listen (polling every 0.05 s)",
            f"{fmt(dig(fuseline, 'pg_pickup_no_listen', 'p50_ms'), 'ms')} / "
            f"{fmt(dig(fuseline, 'pg_pickup_no_listen', 'p99_ms'), 'ms')}",
        ),
        ("claim+report cost, 1k vs 1M finished rows", f"{dig(fuseline, 'pg_claim_report_ms', 'ratio')}x"),
        (
            "worker RSS idle / busy",
            f"{dig(fuseline, 'worker_rss', 'idle_mb')} / {dig(fuseline, 'worker_rss', 'busy_mb')} MB",
        ),
        (
            "SQLite no-op drain, 1 / 4 workers",
            f"{fmt(dig(fuseline, 'sqlite_drain_noop_c1', 'steps_per_s'), '/s')} / "
            f"{fmt(dig(fuseline, 'sqlite_drain_noop_c4', 'steps_per_s'), '/s')}",
        ),
        (
            "SQLite pickup p50 / p99",
            f"{fmt(dig(fuseline, 'sqlite_pickup', 'p50_ms'), 'ms')} / "
            f"{fmt(dig(fuseline, 'sqlite_pickup', 'p99_ms'), 'ms')}",
        ),
    ]
    extra += round_two_figures()
    print()
    for label, value in extra:
        print(f"- {label}: {value}")
    print_many_workers(load("many_workers"))
    print_big_tables(load("big_tables"))
    return 0


def print_big_tables(big: dict[str, Any]) -> None:
    """Claim, report and the listings with ~1k rows and with 10M (bench/big_tables.py)."""
    if "big" not in big:
        return
    rows = big.get("big_load", {})
    print()
    print(
        f"Big tables: {rows.get('finished_steps', 0):,} finished step rows and"
        f" {rows.get('queued_steps', 0):,} queued, against about 1,000 (medians, p99 in brackets):"
    )
    print()
    print("| figure | ~1k rows | big | big / small (p50) |")
    print("|---|---|---|---|")
    for figure in sorted(big["big"]):
        small, large = big["small"].get(figure, {}), big["big"][figure]
        if "p50_ms" not in large:
            continue
        cells = [
            figure.replace("_", " "),
            f"{fmt(dig(small, 'p50_ms'), 'ms')} ({fmt(dig(small, 'p99_ms'), 'ms')})",
            f"{fmt(large['p50_ms'], 'ms')} ({fmt(large.get('p99_ms'), 'ms')})",
            ratio(large["p50_ms"], dig(small, "p50_ms"), higher_is_better=True),
        ]
        print("| " + " | ".join(cells) + " |")


def print_many_workers(curve: dict[str, Any]) -> None:
    """The 1 -> 200 workers curve (bench/many_workers.py), direct and through PgBouncer."""
    counts = sorted({int(key.split("_")[1]) for key in curve if key.startswith(("direct_", "pgbouncer_"))})
    if not counts:
        return
    print()
    print(
        f"Many workers ({curve.get('slots')} slots each, steps awaiting"
        f" {curve.get('wait_seconds')} s, polling; PgBouncer pool {curve.get('pool_size')};"
        f" the server allows {curve.get('server_allows')} connections):"
    )
    print()
    print(
        "| workers | direct | claim p50 / p99 | server conns | CPU per step: server + workers"
        " | PgBouncer | claim p50 / p99 | server / client conns | CPU per step: server + workers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def cells(point: dict[str, Any], pooled: bool) -> list[str]:
        if "steps_per_s" not in point:
            return [point.get("not_run", "-"), "-", "-", "-"]
        conns = f"{point['server_connections_max']}"
        if pooled:
            conns += f" / {point.get('client_connections_max')}"
        latency = f"{fmt(point.get('claim_p50_ms'), 'ms')} / {fmt(point.get('claim_p99_ms'), 'ms')}"
        server, workers = point.get("server_cpu_ms_per_step"), point.get("worker_cpu_ms_per_step")
        cpu = f"{fmt(server, 'ms')} + {fmt(workers, 'ms')}"
        return [fmt(point["steps_per_s"], "/s"), latency, conns, cpu]

    for workers in counts:
        row = [str(workers), *cells(curve.get(f"direct_{workers}", {}), False)]
        row += cells(curve.get(f"pgbouncer_{workers}", {}), True)
        print("| " + " | ".join(row) + " |")


def round_two_figures() -> list[tuple[str, str]]:
    """Slots, writes per step and PgBouncer (bench/{slots,writes,pgbouncer}.json), when measured."""
    slots, writes, bouncer = load("slots"), load("writes"), load("pgbouncer")
    lines = []
    for name, label in (("async", "AsyncStep"), ("threads", "plain steps on threads")):
        one, four = slots.get(f"pg_slots_{name}_1x100", {}), slots.get(f"pg_slots_{name}_4x100", {})
        if one or four:
            lines.append(
                (
                    f"slots, steps waiting 100 ms ({label}): 1,000 on 1 x 100 / 10,000 on 4 x 100",
                    f"{fmt(dig(one, 'seconds'), 's')} / {fmt(dig(four, 'seconds'), 's')}"
                    " (ideal 1.00 s / 2.50 s)",
                ),
            )
    for peer in ("pgqueuer", "procrastinate"):
        theirs = load(peer).get("figures", {})
        one, four = dig(theirs, "slots_1x100_s"), dig(theirs, "slots_4x100_s")
        if one or four:
            lines.append(
                (
                    f"{peer} on the same steps (async jobs, concurrency 100 per process): 1 x 100 / 4 x 100",
                    f"{fmt(one, 's')} / {fmt(four, 's')}",
                ),
            )
    for name, label in (("noop_c4", "no-op, 4 workers"), ("noop_prefetch10_c4", "no-op, prefetch 10"),
                        ("chain3_c4", "chains of 3")):  # fmt: skip
        step = writes.get(name, {}).get("per_step")
        if step:
            lines.append(
                (
                    f"writes per step ({label})",
                    f"{step['wal_bytes']:,} WAL bytes, {step['rows_written']} rows,"
                    f" {step['commits']} commits",
                ),
            )
    for workers in (4, 16):
        direct = dig(bouncer, f"drain_noop_c{workers}_direct", "steps_per_s")
        pooled = dig(bouncer, f"drain_noop_c{workers}_pgbouncer", "steps_per_s")
        if direct and pooled:
            servers = dig(bouncer, f"drain_noop_c{workers}_pgbouncer", "server_connections_max")
            lines.append(
                (
                    f"no-op drain, {workers} workers --no-listen, direct / through PgBouncer"
                    " (transaction mode)",
                    f"{fmt(direct, '/s')} / {fmt(pooled, '/s')} ({pooled / direct:.2f}x,"
                    f" {servers:.0f} server connections)",
                ),
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
