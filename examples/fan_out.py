"""Fan-out with Map, and a call of another workflow with SubWorkflow (the README uses it).

    fan_out:   list_files -> count_rows[i] (one step per file, any worker) -> summarize
    nightly:   fan_out as a child instance (SubWorkflow), then announce its summary

Run it in-process: ``python examples/fan_out.py``; or on workers:
``fuseline submit examples/fan_out.py:nightly --input count=20`` and
``fuseline worker run examples/fan_out.py:nightly --burst``.
"""

from __future__ import annotations

from fuseline import Depends, FunctionStep, Map, SubWorkflow, Workflow


def list_files(count: int = 5) -> list[str]:
    """What the load step found: the list the Map fans out over."""
    return [f"part-{i:04d}.csv" for i in range(count)]


def count_rows(item: str) -> int:
    """One item of the Map: runs once per file, on whichever worker claims it."""
    return 1000 + sum(map(ord, item)) % 97


files = FunctionStep(list_files)
rows = Map(FunctionStep(count_rows), over=files, max_items=10_000)


def summarize(counts: list[int] = Depends(rows)) -> dict:
    """Receives the items' results in item order."""
    return {"files": len(counts), "rows": sum(counts)}


fan_out = Workflow(outputs=FunctionStep(summarize), workflow_id="example-fan-out", version="1")

# The child's input ``count`` is not given: it is taken from the parent's input of that name.
run_fan_out = SubWorkflow(fan_out, name="run_fan_out")


def announce(summary: dict = Depends(run_fan_out)) -> str:
    return f"{summary['files']} files, {summary['rows']} rows"


nightly = Workflow(outputs=FunctionStep(announce), workflow_id="example-nightly", version="1")

if __name__ == "__main__":
    print(fan_out.run({"count": 5}))
    print(nightly.run({"count": 20}))
