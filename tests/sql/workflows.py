"""Workflows the SQL tests run in worker processes, and the ledger their steps write.

Every step execution appends one line ``instance step attempt pid`` to the
file named by the workflow input ``log`` (one ``write`` on a file opened in
append mode, so lines from concurrent processes never interleave). Steps
cannot see their assignment, so :class:`RecordingClient` remembers the one
``get_step`` returned last: a worker runs the step it just claimed before it
claims the next, so that is the step being run.

Imported as ``tests.sql.workflows`` in the test process and in the workers,
so every process builds the same schemas.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fuseline import Computed, Depends, Step, Workflow
from fuseline.broker.base import StepAssignment, StepReport
from fuseline.clients import LocalBrokerClient

#: The assignment the worker of this process is running.
current: StepAssignment | None = None


class RecordingClient(LocalBrokerClient):
    """A LocalBrokerClient that remembers the last assignment, for the ledger."""

    def get_step(self, worker_id: str) -> StepAssignment | None:
        global current
        current = super().get_step(worker_id)
        return current

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        global current
        current = super().report_and_claim(worker_id, report)
        return current


def record(log: str, step_name: str) -> None:
    """Append ``instance step attempt pid`` for the step being run."""
    instance_id = current.instance_id if current is not None else "-"
    attempt = current.attempt if current is not None else 0
    with open(log, "a") as ledger:
        ledger.write(f"{instance_id} {step_name} {attempt} {os.getpid()}\n")
    # A little work, as real steps do: without it one SQLite writer can take
    # every step before the other processes get the lock once.
    time.sleep(0.002)


def read_ledger(path: Path) -> list[tuple[str, str, int, int]]:
    """The ledger's lines as (instance_id, step_name, attempt, pid)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        instance_id, step_name, attempt, pid = line.split(" ")
        rows.append((instance_id, step_name, int(attempt), int(pid)))
    return rows


# -- one step: the workflows of the plan tests, each its own id ------------------------------------


class Only(Step):
    def run_step(self) -> int:
        return 1


def one_step(workflow_id: str) -> Workflow:
    """A workflow of one step returning 1: what a plan test drains or queues by the thousand."""
    return Workflow([Only()], workflow_id=workflow_id, version="1")


# -- diamond: A -> {B, C} -> D (AND join) -----------------------------------------------------


class A(Step):
    def run_step(self, log: str, n: int) -> int:
        record(log, "a")
        return n


a = A()


class B(Step):
    def run_step(self, log: str, value: Computed[int] = Depends(a)) -> int:
        record(log, "b")
        return value * 2


class C(Step):
    def run_step(self, log: str, value: Computed[int] = Depends(a)) -> int:
        record(log, "c")
        return value + 1


b, c = B(), C()


class D(Step):
    def run_step(
        self, log: str, doubled: Computed[int] = Depends(b), plus_one: Computed[int] = Depends(c)
    ) -> int:
        record(log, "d")
        return doubled + plus_one


diamond = Workflow(D(), workflow_id="sql-diamond", version="1")


def diamond_result(n: int) -> int:
    return 2 * n + (n + 1)


# -- fan-in: one root, 8 parallel branches, one join ---------------------------------------------

BRANCHES = 8


class Root(Step):
    def run_step(self, log: str, n: int) -> int:
        record(log, self.name or "root")
        return n


def branch_value(n: int, index: int) -> int:
    return n * 100 + index


def fan_in(kind: str) -> Workflow:
    """``root >> [b1 .. b8] >> join``; the join is an AND join or an OR join (``Depends([b1, ..])``)."""
    root = Root(name="root")

    class Branch(Step):
        def __init__(self, index: int) -> None:
            self.index = index
            super().__init__(name=f"b{index}")

        def run_step(self, log: str, n: Computed[int] = Depends(root)) -> int:
            record(log, self.name or "?")
            return branch_value(n, self.index)

    b1, b2, b3, b4, b5, b6, b7, b8 = (Branch(i) for i in range(1, BRANCHES + 1))

    if kind == "and":

        class AndJoin(Step):
            def run_step(
                self,
                log: str,
                v1: Computed[int] = Depends(b1),
                v2: Computed[int] = Depends(b2),
                v3: Computed[int] = Depends(b3),
                v4: Computed[int] = Depends(b4),
                v5: Computed[int] = Depends(b5),
                v6: Computed[int] = Depends(b6),
                v7: Computed[int] = Depends(b7),
                v8: Computed[int] = Depends(b8),
            ) -> list[Any]:
                record(log, "join")
                return [v1, v2, v3, v4, v5, v6, v7, v8]

        join: Step = AndJoin(name="join")
    elif kind == "or":

        class OrJoin(Step):
            def run_step(
                self, log: str, first: Computed[int] = Depends([b1, b2, b3, b4, b5, b6, b7, b8])
            ) -> Any:
                record(log, "join")
                return first

        join = OrJoin(name="join")
    else:
        raise ValueError(kind)
    return Workflow(join, workflow_id=f"sql-fan-in-{kind}", version="1")


fan_in_and = fan_in("and")
fan_in_or = fan_in("or")

WORKFLOWS = {"diamond": diamond, "fan_in_and": fan_in_and, "fan_in_or": fan_in_or}


# -- fragile: a root that may be claimed only twice, then one successor -------------------------


class Fragile(Step):
    max_attempts = 2

    def run_step(self, log: str, n: int) -> int:
        record(log, "fragile")
        return n


fragile_root = Fragile()


class After(Step):
    def run_step(self, log: str, value: Computed[int] = Depends(fragile_root)) -> int:
        record(log, "after")
        return value


fragile = Workflow(After(), workflow_id="sql-fragile", version="1")

WORKFLOWS["fragile"] = fragile
