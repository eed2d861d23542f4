"""A worker process for the SQL tests: ``python -m tests.sql.worker URL GATE WORKFLOW...``.

It opens ``SqlBroker(URL)``, registers, then creates ``GATE/ready-<pid>`` and
waits for ``GATE/go`` so all workers start draining together. It then drains
with ``ProcessEngine(...).work()`` (or, with ``--seed-loop FILE``, execs the
custom worker loop in FILE unchanged) and prints ``{"pid": ..., "ran": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fuseline import StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.engines import ProcessEngine
from tests.sql import workflows

GATE_TIMEOUT_SECONDS = 60.0


def wait_for_go(gate: Path) -> None:
    (gate / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
    while not (gate / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("the test never opened the gate")
        time.sleep(0.005)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("gate", type=Path)
    parser.add_argument("workflows", nargs="+", choices=sorted(workflows.WORKFLOWS))
    parser.add_argument("--seed-loop", type=Path)
    args = parser.parse_args(argv)
    chosen = [workflows.WORKFLOWS[name] for name in args.workflows]
    broker = SqlBroker(args.url)
    try:
        if args.seed_loop is not None:
            (workflow,) = chosen
            code = compile(args.seed_loop.read_text(), str(args.seed_loop), "exec")
            namespace = {
                "broker": broker,
                "workflow": workflow,
                "step_lookup": workflow.steps,
                "StepReport": StepReport,
                # the documented client, recording the assignment for the ledger
                "LocalBrokerClient": workflows.RecordingClient,
            }
            wait_for_go(args.gate)
            exec(code, namespace)
            ran = None
        else:
            engine = ProcessEngine(workflows.RecordingClient(broker), chosen)
            wait_for_go(args.gate)
            try:
                ran = engine.work()
            finally:
                engine.close()
    finally:
        broker.close()
    print(json.dumps({"pid": os.getpid(), "ran": ran}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
