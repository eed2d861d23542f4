"""Idempotency keys under a race: eight OS processes dispatch one key at the same moment.

Each process opens its own broker, says it is ready, waits for a shared start
time (sent once all eight are ready), and dispatches ``key="order-42"``. With
equal inputs all eight must get the same instance id; with two different
inputs (half each) exactly one instance exists, the processes with its inputs
get its id and the others a KeyConflict naming it. The unique index on
``(workflow_id, key)`` is the only thing that can make this hold: a
check-then-insert would let several through.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from tests.contract.workflows import SINGLE
from tests.sql.processes import subprocess_env

pytestmark = pytest.mark.slow

PROCESSES = 8
KEY = "order-42"

#: Seconds from the last process saying it is ready to the start time: time to hand it to all.
START_MARGIN = 0.5

#: One dispatcher: open a broker, say so, read the start time, wait for it, dispatch, print the
#: outcome as JSON.
DISPATCHER = """
import json, sys, time
from fuseline.broker.sql import SqlBroker
from fuseline.errors import KeyConflict
from tests.contract.workflows import SINGLE as single

url, x = sys.argv[1], int(sys.argv[2])
broker = SqlBroker(url)
schema = single.to_schema()
print("ready", flush=True)
start = float(sys.stdin.readline())
time.sleep(max(0.0, start - time.time()))
try:
    outcome = {"id": broker.dispatch_workflow(schema, {"x": x}, key=sys.argv[3])}
except KeyConflict as conflict:
    outcome = {"conflict": conflict.existing_id}
broker.close()
print(json.dumps(outcome))
"""


def dispatch_at_once(db_url: str, inputs: list[int]) -> list[dict[str, str]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, db_url, str(x), KEY],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for x in inputs
    ]
    try:
        for process in processes:  # every process has opened its broker ...
            said = process.stdout.readline()  # type: ignore[union-attr]
            if said != "ready\n":
                process.wait(timeout=60)
                raise AssertionError(f"a dispatcher said {said!r}: {process.stderr.read()}")  # type: ignore[union-attr]
        start = time.time() + START_MARGIN  # ... and gets the same start time
        for process in processes:
            process.stdin.write(f"{start!r}\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
    except BaseException:
        for process in processes:
            process.kill()
        raise
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    return outcomes


def instances_of_key(broker: SqlBroker) -> list[tuple[str, str]]:
    with broker.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, inputs FROM fuseline_instances WHERE key = :key"), {"key": KEY}
        ).all()
    return [(str(uuid.UUID(str(r.id))), r.inputs) for r in rows]  # SQLite keeps bare hex


def test_eight_processes_dispatching_one_key_at_once_get_one_instance(db_url: str, broker: SqlBroker) -> None:
    broker.dispatch_workflow(SINGLE.to_schema(), {"x": 0})  # the workflow is stored, as after a deploy

    outcomes = dispatch_at_once(db_url, [7] * PROCESSES)

    ((instance_id, inputs),) = instances_of_key(broker)
    assert outcomes == [{"id": instance_id}] * PROCESSES
    assert json.loads(inputs) == {"x": 7}
    assert len(broker.get_instance(instance_id).steps) == len(SINGLE.to_schema().steps)


def test_with_two_inputs_racing_for_one_key_one_wins_and_the_others_are_told_its_id(
    db_url: str, broker: SqlBroker
) -> None:
    broker.dispatch_workflow(SINGLE.to_schema(), {"x": 0})

    outcomes = dispatch_at_once(db_url, [n % 2 for n in range(PROCESSES)])

    ((instance_id, inputs),) = instances_of_key(broker)
    winner = json.loads(inputs)["x"]
    for n, outcome in enumerate(outcomes):
        expected = {"id": instance_id} if n % 2 == winner else {"conflict": instance_id}
        assert outcome == expected, (n, outcomes)
