"""Peer benchmark: DBOS Transact (durable workflows, database-backed queues) on PostgreSQL.

A "task" is a workflow with one no-op @DBOS.step. This process enqueues with a
DBOSClient; a separate worker process (DBOS launched, listening to the one queue under
test) runs the workflows. DBOS queues only poll (no LISTEN/NOTIFY), so the queue's
polling interval bounds both pickup latency and throughput.

Figures (one repetition each):
  enqueue_one_per_s     N workflows enqueued one by one with DBOSClient.enqueue
  drain_c4_per_s        q_c4: worker_concurrency 4, polling 10 ms; N workflows, from the
                        first workflow start until all N are SUCCESS in the database
  drain_c1_per_s        q_c1: worker_concurrency 1, polling 10 ms; N_C1 workflows
  drain_default_per_s   q_default: DBOS defaults (no concurrency limit, 1 s polling)
  pickup_p50_ms/p99_ms  idle worker on q_default (defaults, 1 s polling);
                        enqueue call start -> workflow body start, first WARMUP dropped
  pickup_fast_p50_ms/.. the same on q_fast (no limit, 10 ms polling)
  chain3_2000_c4_s      CHAINS workflows of 3 no-op steps on q_c4, from the first
                        enqueue (worker already idle) until all are SUCCESS
Writes bench/results/dbos.json.

    python bench/peers/peer_dbos.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from importlib.metadata import version

import peerutil as pu
from dbos import DBOS, DBOSClient

DB = "peer_dbos"
APP = "peerbench"
QUEUES = {
    # name: (worker_concurrency, polling_interval_sec)
    "q_default": (None, 1.0),
    "q_fast": (None, 0.01),
    "q_c1": (1, 0.01),
    "q_c4": (4, 0.01),
}


class W:
    """Worker-process state, updated from DBOS's workflow threads."""

    lock = threading.Lock()
    count = 0
    target = 0
    first: float | None = None
    lat: list[tuple[int, float]] = []
    done = threading.Event()


def _mark_start() -> None:
    with W.lock:
        if W.first is None:
            W.first = time.perf_counter()


def _count_done() -> None:
    with W.lock:
        W.count += 1
        if W.count >= W.target:
            W.done.set()


@DBOS.step(name="noop_step")
def noop_step() -> None:
    return None


@DBOS.workflow(name="wf_noop")
def wf_noop() -> None:
    _mark_start()
    noop_step()
    _count_done()


@DBOS.workflow(name="wf_pickup")
def wf_pickup(t0: float, seq: int) -> None:
    now = time.time()
    with W.lock:
        W.lat.append((seq, now - t0))
    noop_step()
    _count_done()


@DBOS.workflow(name="wf_three")
def wf_three() -> None:
    _mark_start()
    noop_step()
    noop_step()
    noop_step()
    _count_done()


def config() -> dict:
    return {"name": APP, "system_database_url": pu.dsn(DB), "log_level": "WARNING"}


def succeeded(queue: str) -> int:
    return pu.sql(
        DB,
        "SELECT count(*) FROM dbos.workflow_status WHERE queue_name = %s AND status = 'SUCCESS'",
        (queue,),
    )[0][0]


def reset() -> None:
    pu.sql(DB, "DELETE FROM dbos.workflow_status")  # cascades to the step rows
    pu.sql(DB, "VACUUM ANALYZE dbos.workflow_status")
    pu.checkpoint(DB)


def worker_main(mode: str, queue: str, n: int, timeout: float) -> None:
    """Worker-process body: launch DBOS on one queue, run until n workflows are SUCCESS."""
    W.target = n
    DBOS(config=config())
    if mode == "setup":  # first launch creates the dbos schema
        DBOS.launch()
        DBOS.destroy()
        return
    DBOS.listen_queues([queue])
    DBOS.launch()
    print("READY", flush=True)
    if not W.done.wait(timeout=timeout):
        print(json.dumps({"error": f"timeout, {W.count}/{n} done"}), flush=True)
        DBOS.destroy()
        sys.exit(1)
    while succeeded(queue) < n:  # the status row is written after the body returns
        time.sleep(0.005)
    end = time.perf_counter()
    out = {"elapsed": end - W.first if W.first else None, "lat": W.lat}
    DBOS.destroy(workflow_completion_timeout_sec=5)
    print(json.dumps(out), flush=True)


def spawn_worker(queue: str, n: int, timeout: float) -> subprocess.Popen:
    """Start a worker process on `queue` and wait until DBOS is launched there."""
    proc = pu.spawn([__file__, "_worker", "run", queue, str(n), str(timeout)])
    pu.wait_ready(proc)
    return proc


def enqueue(client: DBOSClient, queue: str, wf: str, n: int) -> float:
    """Enqueue n argument-less workflows one by one; returns workflows/s."""
    opts = {"queue_name": queue, "workflow_name": wf}
    with pu.Timer() as t:
        for _ in range(n):
            client.enqueue(opts)
    return n / t.elapsed


def measure_drain(report: pu.Report, args, client: DBOSClient, figure: str, queue: str, n: int) -> None:
    with report.phase(figure):
        reset()
        rate = enqueue(client, queue, "wf_noop", n)
        if "enqueue_one_per_s" not in report.data["figures"]:
            report.add("enqueue_one_per_s", rate)
        pu.checkpoint(DB)
        proc = spawn_worker(queue, n, args.phase_timeout)
        res = pu.collect_json(proc, args.phase_timeout + 30)
        if succeeded(queue) != n:
            raise RuntimeError(f"{succeeded(queue)} workflows SUCCESS, expected {n}")
        report.add(figure, n / res["elapsed"])


def measure_pickup(report: pu.Report, args, client: DBOSClient, prefix: str, queue: str) -> None:
    with report.phase(prefix):
        reset()
        total = args.pickup_n + args.warmup
        proc = spawn_worker(queue, total, args.phase_timeout)
        time.sleep(3.0)  # DBOS's queue thread starts on a 1 s check loop
        rng = random.Random(42)
        opts = {"queue_name": queue, "workflow_name": "wf_pickup"}
        for seq in range(total):
            time.sleep(rng.uniform(args.gap_min_ms, args.gap_max_ms) / 1000.0)
            client.enqueue(opts, time.time(), seq)
        res = pu.collect_json(proc, args.phase_timeout + 30)
        lat_ms = [v * 1000.0 for seq, v in res["lat"] if seq >= args.warmup]
        if len(lat_ms) != args.pickup_n:
            raise RuntimeError(f"{len(lat_ms)} pickup samples, expected {args.pickup_n}")
        report.add(f"{prefix}_p50_ms", pu.percentile(lat_ms, 50))
        report.add(f"{prefix}_p99_ms", pu.percentile(lat_ms, 99))


def measure_chain(report: pu.Report, args, client: DBOSClient, queue: str = "q_c4") -> None:
    with report.phase("chain3_2000_c4_s"):
        reset()
        proc = spawn_worker(queue, args.chains, args.phase_timeout)
        time.sleep(3.0)  # worker idle and polling before the clock starts
        with pu.Timer() as t:
            enqueue(client, queue, "wf_three", args.chains)
            pu.collect_json(proc, args.phase_timeout + 30)
        if succeeded(queue) != args.chains:
            raise RuntimeError(f"{succeeded(queue)} workflows SUCCESS, expected {args.chains}")
        report.add("chain3_2000_c4_s", t.elapsed)


def main(report: pu.Report, args: argparse.Namespace) -> None:
    pu.recreate_db(DB)
    setup = pu.spawn([__file__, "_worker", "setup", "-", "0", "0"])
    setup.communicate(timeout=120)
    if setup.returncode != 0:
        raise RuntimeError(f"DBOS schema setup exited {setup.returncode}")
    client = DBOSClient(system_database_url=pu.dsn(DB), application_name=APP)
    try:
        for name, (concurrency, poll) in QUEUES.items():
            client.register_queue(
                name, worker_concurrency=concurrency, polling_interval_sec=poll, application_name=APP
            )
        measure_drain(report, args, client, "drain_c4_per_s", "q_c4", args.n)
        measure_drain(report, args, client, "drain_c1_per_s", "q_c1", args.n_c1)
        measure_drain(report, args, client, "drain_default_per_s", "q_default", args.n)
        measure_pickup(report, args, client, "pickup", "q_default")
        measure_pickup(report, args, client, "pickup_fast", "q_fast")
        measure_chain(report, args, client)
    finally:
        client.destroy()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3_000, help="workflows per drain (c=4, defaults)")
    ap.add_argument("--n-c1", type=int, default=1_000, help="workflows for the c=1 drain (~50/s)")
    ap.add_argument("--chains", type=int, default=2_000, help="number of 3-step workflows")
    ap.add_argument("--pickup-n", type=int, default=100, help="pickup samples kept")
    ap.add_argument("--warmup", type=int, default=10, help="pickup samples dropped first")
    ap.add_argument("--gap-min-ms", type=float, default=30.0)
    ap.add_argument("--gap-max-ms", type=float, default=70.0)
    ap.add_argument("--phase-timeout", type=float, default=90.0, help="s, per measurement")
    ap.add_argument("--budget", type=int, default=300, help="hard limit for the whole script, s")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_c1, args.chains, args.pickup_n = 200, 50, 50, 20
        args.phase_timeout, args.budget = 30.0, 90
    return args


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        sys.exit(0)
    a = parse_args()
    params = {k: v for k, v in vars(a).items() if k not in ("quick", "budget", "phase_timeout")}
    rep = pu.Report("dbos", version("dbos"), a.quick, params)
    rep.note("unit is a checkpointed workflow (status row + step rows); queues poll, no LISTEN/NOTIFY")
    rep.note("drain_c1/c4 and chain3 use 10 ms polling; pickup_* uses DBOS's default 1 s polling")
    rep.note("enqueue_one_per_s is timed while filling q_c4 for drain_c4; DBOS has no batch enqueue call")
    pu.run(rep, lambda: main(rep, a), a.budget)
