"""What going through ``fuseline server`` costs, and what one server process holds.

In one run, on a PostgreSQL database of its own (created, then dropped):

- no-op drain of N steps by 4 worker processes through a ``fuseline server``
  (``HttpBrokerClient``) and by 4 workers on the database directly: steps/s
  of each and their ratio;
- idle pickup latency, dispatch call -> step start, p50/p99, both ways;
- 200 simulated workers held by one server process: threads in this process,
  each a real ``HttpBrokerClient`` that registers, long-polls for work,
  heartbeats and claims (and reports) when woken, while instances trickle
  in through the server; the database connections of the server are sampled
  from ``pg_stat_activity`` (at most ``--connections`` + 1 LISTEN) and every
  claim's latency is recorded. 200 interpreters would not fit in 2 cores;
  200 clients with their own HTTP connections do.

The server is the ``fuseline server`` console script, one process. Prints a
table and writes ``bench/results/http.json``.

    python bench/http_bench.py            # the full set (about 2 minutes)
    python bench/http_bench.py --quick    # a smoke run (about 40 s)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fuseline_bench import NOOP, PICKUP, WORKFLOWS  # noqa: E402

from fuseline.broker import Broker, SqlBroker  # noqa: E402
from fuseline.broker.base import StepReport  # noqa: E402
from fuseline.clients import LocalBrokerClient  # noqa: E402
from fuseline.clients.http import HttpBrokerClient  # noqa: E402
from fuseline.engines import ProcessEngine  # noqa: E402
from fuseline.service.tokens import TokenStore  # noqa: E402

ADMIN_DSN = os.environ.get("FUSELINE_BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "fuseline_http_bench"
SERVER_CONNECTIONS = 8
#: The most database connections the 200-worker figure may see from the server.
CONNECTION_LIMIT = 20
SCRIPT = Path(sys.executable).parent / "fuseline"


# -- the database and the server ------------------------------------------------------------------
def database_url() -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + DATABASE


def fresh_database() -> str:
    """An empty migrated database (the previous figure's dropped with everything in it)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    SqlBroker(database_url(), migrate=True).close()
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    return database_url()


def drop_database() -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One ``fuseline server`` process over ``url``, with a worker and an operator token."""

    def __init__(self, url: str) -> None:
        broker = SqlBroker(url)
        try:
            store = TokenStore(broker)
            self.worker_token = store.create("bench-workers", "worker")
            self.operator_token = store.create("bench-operator", "operator")
        finally:
            broker.close()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FUSELINE_DATABASE_URL": url}
        argv = [str(SCRIPT), "server", "--port", str(self.port), "--connections", str(SERVER_CONNECTIONS)]
        self.proc = subprocess.Popen([*argv, "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the fuseline server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# -- worker processes (ProcessEngine, as `fuseline worker run` runs it) -----------------------------
def _worker(
    make_broker: Callable[[], Broker], workflow: str, start: Any, ready: Any, until_idle: bool
) -> None:
    broker = make_broker()
    engine = ProcessEngine(LocalBrokerClient(broker), [WORKFLOWS[workflow]])
    ready.release()
    start.wait()
    keys = [(WORKFLOWS[workflow].workflow_id, "1")]
    idle = (lambda: not broker.has_running_instances(keys)) if until_idle else None
    try:
        engine.work(block=True, poll_interval=0.5, until=idle)
    finally:
        engine.close()
        broker.close()


def drain(url: str, make_broker: Callable[[], Broker], steps: int, processes: int) -> dict[str, float]:
    """Dispatch ``steps`` one-step instances, then time ``processes`` workers draining them."""
    broker = SqlBroker(url)
    for offset in range(0, steps, 1000):
        broker.dispatch_many(NOOP.to_schema(), [{} for _ in range(min(1000, steps - offset))])
    broker.close()
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    args = (make_broker, "noop", start, ready, True)
    procs = [context.Process(target=_worker, args=args) for _ in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
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
        raise RuntimeError("the drain did not finish cleanly")
    return {"seconds": round(seconds, 3), "steps_per_s": round(steps / seconds, 1)}


def pickup(url: str, make_broker: Callable[[], Broker], samples: int) -> dict[str, float]:
    """One idle worker; instances dispatched one at a time 30-70 ms apart; the first 10 dropped.
    The latency is from the dispatch call to the start of the step (both read this machine's clock)."""
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    proc = context.Process(target=_worker, args=(make_broker, "pickup", start, ready, False))
    proc.start()
    ready.acquire()
    start.set()
    time.sleep(1.0)  # let it settle into waiting
    broker = SqlBroker(url)
    ids = []
    try:
        for n in range(samples + 10):
            ids.append(PICKUP.dispatch(broker, {"sent": time.time()}))
            time.sleep(0.03 + (n % 5) * 0.01)
        deadline = time.monotonic() + 30
        while broker.has_running_instances() and time.monotonic() < deadline:
            time.sleep(0.05)
        measured = sorted(broker.get_instance(i).result * 1000 for i in ids[10:])
    finally:
        broker.close()
        proc.terminate()
        proc.join(10)
    return {"p50_ms": round(statistics.median(measured), 2), "p99_ms": round(percentile(measured, 0.99), 2)}


def percentile(ordered: list[float], share: float) -> float:
    return ordered[max(0, int(len(ordered) * share) - 1)]


# -- 200 simulated workers on one server process ---------------------------------------------------
class Simulated(threading.Thread):
    """A worker without the work: register, long-poll, heartbeat, claim when woken, report at once."""

    def __init__(self, server: Server, stop: threading.Event, heartbeat: float) -> None:
        super().__init__(daemon=True)
        self.client = HttpBrokerClient(server.url, server.worker_token)
        self.stop_event = stop
        self.heartbeat = heartbeat
        self.claims: list[float] = []  # seconds per claim request
        self.done = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            worker_id = self.client.register_worker([NOOP.to_schema()])
            next_beat = time.monotonic() + self.heartbeat
            while not self.stop_event.is_set():
                if time.monotonic() >= next_beat:
                    self.client.keep_alive(worker_id)
                    next_beat += self.heartbeat
                if not self.client.wait_for_work(min(5.0, max(0.1, next_beat - time.monotonic()))):
                    continue
                while not self.stop_event.is_set():
                    began = time.perf_counter()
                    step = self.client.get_step(worker_id)
                    self.claims.append(time.perf_counter() - began)
                    if step is None:
                        break
                    report = StepReport(
                        step.workflow_id, step.instance_id, step.step_name, "SUCCEEDED", None,
                        step.attempt, None, step.version,
                    )  # fmt: skip
                    self.client.report_step(worker_id, report)
                    self.done += 1
            self.client.deregister_worker(worker_id)
        except BaseException as exc:  # reported by the figure, not lost in a thread
            self.failure = exc
        finally:
            self.client.close()


def server_connections(stop: threading.Event, seen: list[int]) -> None:
    """Sample every 50 ms the fuseline sessions on the bench database: only the server has any."""
    with psycopg.connect(database_url(), autocommit=True, application_name="http-bench") as conn:
        while not stop.is_set():
            count = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'fuseline'",
                (DATABASE,),
            ).fetchone()
            seen.append(int(count[0]) if count else 0)
            stop.wait(0.05)


def many_workers(server: Server, workers: int, seconds: float, batch: int, every: float) -> dict[str, Any]:
    """``workers`` simulated workers for ``seconds``; ``batch`` instances dispatched (through the
    server) every ``every`` seconds wake all of them, and they race for the steps."""
    stop, sampling = threading.Event(), threading.Event()
    seen: list[int] = []
    sampler = threading.Thread(target=server_connections, args=(sampling, seen), daemon=True)
    sampler.start()
    fleet = [Simulated(server, stop, heartbeat=10.0) for _ in range(workers)]
    began = time.perf_counter()
    for worker in fleet:
        worker.start()
    operator = HttpBrokerClient(server.url, server.operator_token)
    dispatched = 0
    try:
        time.sleep(2.0)  # every worker registered and waiting
        registered = time.perf_counter() - began
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            operator.dispatch_many(NOOP.to_schema(), [{} for _ in range(batch)])
            dispatched += batch
            time.sleep(every)
        drained_by = time.monotonic() + 30
        while sum(w.done for w in fleet) < dispatched and time.monotonic() < drained_by:
            time.sleep(0.1)
    finally:
        stop.set()
        for worker in fleet:
            worker.join(40)
        operator.close()
        sampling.set()
        sampler.join(5)
    failures = [w.failure for w in fleet if w.failure is not None]
    if failures:
        raise RuntimeError(f"{len(failures)} simulated workers failed, the first: {failures[0]!r}")
    claims = sorted(ms * 1000 for w in fleet for ms in w.claims)
    done = sum(w.done for w in fleet)
    if done != dispatched:
        raise RuntimeError(f"{done} of {dispatched} steps done by the simulated workers")
    return {
        "workers": workers,
        "seconds": seconds,
        "registered_within_s": round(registered, 2),
        "steps": done,
        "claims": len(claims),
        "claim_p50_ms": round(statistics.median(claims), 2),
        "claim_p99_ms": round(percentile(claims, 0.99), 2),
        "db_connections_max": max(seen),
        "db_connections_limit": CONNECTION_LIMIT,
        "samples": len(seen),
    }


# -- the run ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", default=str(HERE / "results" / "http.json"))
    args = parser.parse_args()
    q = args.quick
    sizes = {"noop": 1_000 if q else 10_000, "pickup": 30 if q else 200, "simulated_seconds": 8 if q else 30}
    figures: dict[str, Any] = {"sizes": sizes, "server_connections": SERVER_CONNECTIONS}

    def record(name: str, measure: Callable[[], Any]) -> None:
        began = time.perf_counter()
        figures[name] = measure()
        print(f"{name:<26} {json.dumps(figures[name])}  ({time.perf_counter() - began:.0f} s)", flush=True)

    def through_server(measure: Callable[[str, Callable[[], Broker]], Any]) -> Any:
        url = fresh_database()
        server = Server(url)
        try:
            return measure(url, lambda: HttpBrokerClient(server.url, server.worker_token))
        finally:
            server.stop()

    def direct(measure: Callable[[str, Callable[[], Broker]], Any]) -> Any:
        url = fresh_database()
        return measure(url, lambda: SqlBroker(url))

    def held(server_seconds: float) -> dict[str, Any]:
        server = Server(fresh_database())
        try:
            return many_workers(server, 200, server_seconds, batch=20, every=1.0)
        finally:
            server.stop()

    try:
        record("drain_c4_direct", lambda: direct(lambda u, b: drain(u, b, sizes["noop"], 4)))
        record("drain_c4_server", lambda: through_server(lambda u, b: drain(u, b, sizes["noop"], 4)))
        record("pickup_direct", lambda: direct(lambda u, b: pickup(u, b, sizes["pickup"])))
        record("pickup_server", lambda: through_server(lambda u, b: pickup(u, b, sizes["pickup"])))
        record("workers_200", lambda: held(sizes["simulated_seconds"]))
    finally:
        drop_database()
    direct_rate = figures["drain_c4_direct"]["steps_per_s"]
    server_rate = figures["drain_c4_server"]["steps_per_s"]
    figures["drain_c4_ratio"] = round(server_rate / direct_rate, 2)
    print_table(figures)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    many = figures["workers_200"]
    if many["db_connections_max"] > CONNECTION_LIMIT:
        used = many["db_connections_max"]
        raise SystemExit(f"the server used {used} database connections (limit {CONNECTION_LIMIT})")


def print_table(f: dict[str, Any]) -> None:
    d, s, m = f["drain_c4_direct"], f["drain_c4_server"], f["workers_200"]
    pd, ps = f["pickup_direct"], f["pickup_server"]
    rows = [
        ("no-op drain, 4 workers (steps/s)", f"{d['steps_per_s']:,.0f}", f"{s['steps_per_s']:,.0f}",
         f"{f['drain_c4_ratio']:.2f}x"),
        ("idle pickup p50 (ms)", f"{pd['p50_ms']:.2f}", f"{ps['p50_ms']:.2f}", ""),
        ("idle pickup p99 (ms)", f"{pd['p99_ms']:.2f}", f"{ps['p99_ms']:.2f}", ""),
        ("200 workers: db connections max", "-", f"{m['db_connections_max']} (limit {CONNECTION_LIMIT})", ""),
        ("200 workers: claim p50 / p99 (ms)", "-", f"{m['claim_p50_ms']:.2f} / {m['claim_p99_ms']:.2f}", ""),
        ("200 workers: steps / claims", "-", f"{m['steps']} / {m['claims']}", ""),
    ]  # fmt: skip
    print()
    print(f"| {'figure':<34} | {'direct':>8} | {'through the server':>22} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 24}|{'-' * 8}|")
    for name, direct_value, server_value, ratio in rows:
        print(f"| {name:<34} | {direct_value:>8} | {server_value:>22} | {ratio:>6} |")
    print()


if __name__ == "__main__":
    main()
