"""Workflows with Map, SubWorkflow and WaitFor steps for the contract suite, and a driver
that runs whatever a broker hands out with the real engine code (``run_assignment``)."""

from __future__ import annotations

from collections.abc import Sequence

from fuseline import Depends, FunctionStep, Map, SubWorkflow, WaitFor, Workflow
from fuseline.broker import Broker
from fuseline.engines.assignment import run_assignment
from fuseline.policies import ConcurrencyLimit, RetryPolicy

from .workflows import CALLS


def _rows(n: int) -> list[int]:
    return list(range(n))


def _square(item: int, offset: int = 0) -> int:
    CALLS.hit(("square", item))
    if item == 13:
        raise ValueError("thirteen is unlucky")
    return item * item + offset


rows = FunctionStep(_rows, name="rows")
squares = Map(FunctionStep(_square), over=rows, name="squares")


def _sum(values: list[int] = Depends(squares)) -> dict[str, object]:
    return {"values": values, "sum": sum(values)}


#: rows -> squares[i] (one per row) -> total
MAPPED = Workflow(outputs=[FunctionStep(_sum, name="total")], workflow_id="contract-map")


def _pairs(item: int) -> list[int]:
    return [item, item + 1]


def _sum_pair(item: list[int]) -> int:
    return sum(item)


pairs = Map(FunctionStep(_pairs), over=rows, name="pairs")
#: a Map over a Map's results: each item is a list, mapped again
MAP_OF_MAP = Workflow(
    outputs=[Map(FunctionStep(_sum_pair), over=pairs, name="sums")], workflow_id="contract-map-of-map"
)

_flaky_seen: dict[int, int] = {}


def _flaky(item: int) -> int:
    """Fails the first time it sees each item: a RetryPolicy makes every item succeed."""
    _flaky_seen[item] = _flaky_seen.get(item, 0) + 1
    if _flaky_seen[item] == 1:
        raise RuntimeError(f"first try of {item}")
    return item


def _one_at_a_time(item: int) -> int:
    return item


#: Items under the mapped step's ConcurrencyLimit(1): one runs at a time, whatever the workers.
LIMITED_ITEMS = Workflow(
    outputs=[Map(FunctionStep(_one_at_a_time, policies=[ConcurrencyLimit(1)]), over=rows, name="limited")],
    workflow_id="contract-map-limited",
)

RETRIED_ITEMS = Workflow(
    outputs=[
        Map(FunctionStep(_flaky, policies=[RetryPolicy(max_retries=1, wait=0.0)]), over=rows, name="flaky")
    ],
    workflow_id="contract-map-retries",
)


approve = WaitFor("approved", name="approve")
prepare = FunctionStep(lambda x: x, name="prepare")
prepare >> approve


def _publish(decision: object = Depends(approve), x: int = 0) -> object:
    return {"decision": decision, "x": x}


#: prepare -> approve (WaitFor "approved") -> publish
APPROVAL = Workflow(outputs=[FunctionStep(_publish, name="publish")], workflow_id="contract-approval")
#: the same wait with a short timeout
TIMED_APPROVAL = Workflow(
    outputs=[WaitFor("approved", timeout=0.3, name="approve")], workflow_id="contract-approval-timeout"
)


def _child_step(x: int, mode: str) -> str:
    if x < 0:
        raise ValueError("negative x")
    return f"{mode}:{x}"


CHILD = Workflow(outputs=[FunctionStep(_child_step, name="work")], workflow_id="contract-child")
start = FunctionStep(lambda n: n + 1, name="start")
#: start -> call (SubWorkflow CHILD with x = start's result, mode from the parent's input)
PARENT = Workflow(
    outputs=[SubWorkflow(CHILD, inputs={"x": Depends(start)}, name="call")], workflow_id="contract-parent"
)


def run_all(broker: Broker, worker_id: str, flows: Sequence[Workflow], limit: int = 10_000) -> int:
    """Claim, run and report until the broker hands out nothing; how many steps ran."""
    by_key = {f.key: f for flow in flows for f in (flow, *flow.children)}
    ran = 0
    while ran < limit and (assignment := broker.get_step(worker_id)) is not None:
        flow = by_key[(assignment.workflow_id, assignment.version)]
        execution = run_assignment(flow, assignment, policy_retries=False)  # as a worker: the broker retries
        broker.report_step(worker_id, execution.report)
        ran += 1
    return ran


def reset() -> None:
    _flaky_seen.clear()
