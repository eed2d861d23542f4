"""The workflow the shapes chaos test runs in real worker processes.

``nested``: start -> call (SubWorkflow ``mapped``, its ``n`` from start) ;
``mapped``: rows -> double[i] (a Map over ``size`` rows) -> total. The parent's
result is ``sum(2 * (1000 n + i) for i < size)``, so a lost or doubled item
shows in it.
"""

from __future__ import annotations

import time

from fuseline import Depends, FunctionStep, Map, SubWorkflow, Workflow


def rows(n: int, size: int) -> list[int]:
    return [1000 * n + i for i in range(size)]


def double(item: int, pause: float = 0.0) -> int:
    time.sleep(pause)
    return 2 * item


rows_step = FunctionStep(rows, name="rows")
doubled = Map(FunctionStep(double), over=rows_step, name="double")


def total(values: list[int] = Depends(doubled)) -> int:
    return sum(values)


mapped = Workflow(outputs=FunctionStep(total, name="total"), workflow_id="chaos-mapped", version="1")


def start(n: int) -> int:
    return n


start_step = FunctionStep(start, name="start")
nested = Workflow(
    outputs=SubWorkflow(mapped, inputs={"n": Depends(start_step)}, name="call"),
    workflow_id="chaos-nested",
    version="1",
)


def expected(n: int, size: int) -> int:
    return sum(2 * (1000 * n + i) for i in range(size))
