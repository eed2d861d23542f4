"""Workflows the dashboard tests run: slow enough that a browser sees their steps change.

- ``pipeline``: ``prepare -> slow -> {fan (a Map of 4 items), tail} -> finish``; ``slow`` sleeps
  ``SLOW_SECONDS``, so the page polls it QUEUED/RUNNING before it turns SUCCEEDED.
- ``quick``: one step, for the listing at scale (never run there, only dispatched).
"""

from __future__ import annotations

import time

from fuseline import Computed, Depends, FunctionStep, Map, Step, Workflow

SLOW_SECONDS = 1.0


class Prepare(Step):
    def run_step(self, count: int = 4) -> int:
        return count


prepare = Prepare()


class Slow(Step):
    def run_step(self, count: Computed[int] = Depends(prepare)) -> list[int]:
        time.sleep(SLOW_SECONDS)
        return list(range(count))


slow = Slow()


def square(item: int) -> int:
    return item * item


fan = Map(FunctionStep(square), over=slow, name="fan")


class Tail(Step):
    def run_step(self, values: Computed[list[int]] = Depends(slow)) -> int:
        return len(values)


tail = Tail()


class Finish(Step):
    def run_step(
        self, squares: Computed[list[int]] = Depends(fan), length: Computed[int] = Depends(tail)
    ) -> dict[str, int]:
        return {"sum": sum(squares), "length": length}


pipeline = Workflow(outputs=Finish(), workflow_id="dash-pipeline", version="1")


class Only(Step):
    def run_step(self, n: int = 0) -> int:
        return n


quick = Workflow(outputs=Only(), workflow_id="dash-quick", version="1")
