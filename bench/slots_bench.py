"""Slots: steps that wait 100 ms each, drained by worker processes with 100 slots.

The case slots are for: I/O-bound steps (an API call, a query) that spend
their time waiting. Each figure dispatches the instances first, starts the
worker processes (``ProcessEngine(..., slots=100)``, as ``fuseline worker
run --slots 100`` runs it), releases them together and times the drain
until the last process exits. ``async`` steps ``await asyncio.sleep(0.1)``
on the worker's event loop; ``threads`` steps ``time.sleep(0.1)`` on its
threads. ``ideal_seconds`` is the wait alone: steps / (processes x slots)
x 0.1 s.

    python bench/slots_bench.py            # 1,000 steps on 1 x 100, 10,000 on 4 x 100
    python bench/slots_bench.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fuseline_bench  # noqa: E402  (its throwaway-database helpers)

from fuseline import AsyncStep, Step, Workflow  # noqa: E402
from fuseline.broker import SqlBroker  # noqa: E402
from fuseline.clients import LocalBrokerClient  # noqa: E402
from fuseline.engines import ProcessEngine  # noqa: E402

#: Our own database name, so this never drops the one a running `make bench` uses.
fuseline_bench.DATABASE = "fuseline_slots_bench"

WAIT_SECONDS = 0.1
SLOTS = 100


class WaitAsync(AsyncStep):
    async def run_step(self) -> None:
        await asyncio.sleep(WAIT_SECONDS)


class WaitThread(Step):
    def run_step(self) -> None:
        time.sleep(WAIT_SECONDS)


WORKFLOWS = {
    "async": Workflow([WaitAsync(name="wait")], workflow_id="bench-slots-async", version="1"),
    "threads": Workflow([WaitThread(name="wait")], workflow_id="bench-slots-threads", version="1"),
}


def _worker(url: str, kind: str, slots: int, start: Any, ready: Any) -> None:
    workflow = WORKFLOWS[kind]
    broker = SqlBroker(url)
    engine = ProcessEngine(LocalBrokerClient(broker), [workflow], slots=slots)
    ready.release()
    start.wait()
    keys = [(workflow.workflow_id, workflow.version)]
    try:
        engine.work(block=True, poll_interval=0.05, until=lambda: not broker.has_running_instances(keys))
    finally:
        engine.close()
        broker.close()


def drain(kind: str, steps: int, processes: int, slots: int = SLOTS) -> dict[str, float]:
    """Dispatch ``steps`` one-step instances on a fresh database, then time the drain."""
    url = fuseline_bench.fresh_postgres()
    broker = SqlBroker(url)
    try:
        for offset in range(0, steps, 1000):
            broker.dispatch_many(WORKFLOWS[kind].to_schema(), [{}] * min(1000, steps - offset))
    finally:
        broker.close()
    fuseline_bench.checkpoint(url)
    context = mp.get_context("fork")
    start, ready = context.Event(), context.Semaphore(0)
    procs = [context.Process(target=_worker, args=(url, kind, slots, start, ready)) for _ in range(processes)]
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
        raise RuntimeError(f"the {kind} drain did not finish cleanly")
    return {
        "steps": steps,
        "processes": processes,
        "slots": slots,
        "seconds": round(seconds, 3),
        "ideal_seconds": round(steps / (processes * slots) * WAIT_SECONDS, 3),
        "steps_per_s": round(steps / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", default=str(HERE / "results" / "slots.json"))
    parser.add_argument("--rounds", type=int, default=3, help="runs of each figure; the median is kept")
    args = parser.parse_args()
    one, four = (1_000, 2_000) if args.quick else (1_000, 10_000)
    rounds = 1 if args.quick else args.rounds
    figures: dict[str, Any] = {"wait_seconds": WAIT_SECONDS, "rounds": rounds}

    def record(name: str, measure: Callable[[], dict[str, float]]) -> None:
        runs = [measure() for _ in range(rounds)]
        value = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        value["all_seconds"] = [r["seconds"] for r in runs]
        figures[name] = value
        print(f"{name:<34} {json.dumps(value)}", flush=True)

    for kind in ("async", "threads"):
        record(f"pg_slots_{kind}_1x{SLOTS}", lambda kind=kind: drain(kind, one, 1))
        record(f"pg_slots_{kind}_4x{SLOTS}", lambda kind=kind: drain(kind, four, 4))
    fuseline_bench.write_results(args.out, figures)


if __name__ == "__main__":
    main()
