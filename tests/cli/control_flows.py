"""Workflows for the CLI tests of issue 11 (delays, keys, priorities, retries, Sleep, limits, queues).

Copied next to ``flows.py`` into the folder the commands run in, and
imported by ``fuseline`` as the module ``control_flows``.

- ``echo``: one step returning its input ``x`` (for delays, keys and priorities).
- ``wobbly``: one step with ``RetryPolicy(max_retries=2, wait=0.3)`` that fails
  while the file ``ledger`` has fewer than ``failures`` lines (it adds one per run).
- ``napping``: ``first -> nap (Sleep 6 s, long enough for a few CLI calls) -> after``,
  ``after`` adding one to ``first``.
- ``gpu_then_cpu``: ``render`` in queue ``gpu`` -> ``publish`` in ``default``.
- ``exclusive``: one step, ``ConcurrencyLimit(1)``, that blocks until the file
  ``gate`` exists (creating ``<gate>.waiting`` first).
- ``one_per_customer``: the same blocking step in a workflow limited to one
  instance in progress per ``customer``.
- ``throttled``: one step with ``RateLimit(1, per=6)``: a window long enough for a
  few CLI calls (each a new process) to see the second start held back.
"""

from __future__ import annotations

from pathlib import Path

from flows import WaitForGate  # the tests copy flows.py next to this module

from fuseline import Computed, Depends, Sleep, Step, Workflow
from fuseline.policies import ConcurrencyLimit, RateLimit, RetryPolicy


class Echo(Step):
    def run_step(self, x: int) -> int:
        return x


#: The throttled step's window.
RATE_WINDOW_SECONDS = 6.0
#: The nap of ``napping``.
NAP_SECONDS = 6.0

echo = Workflow(outputs=Echo(), workflow_id="cli-echo", version="1")


class Wobbly(Step):
    def run_step(self, ledger: str, failures: int) -> str:
        path = Path(ledger)
        with path.open("a") as lines:
            lines.write("run\n")
        runs = path.read_text().count("\n")
        if runs <= failures:
            raise ValueError(f"wobbly run {runs} of {failures} planned failures [{path.name}]")
        return f"steady after {runs} runs"


wobbly = Workflow(
    outputs=Wobbly(policies=[RetryPolicy(max_retries=2, wait=0.3)]), workflow_id="cli-wobbly", version="1"
)


class First(Step):
    def run_step(self, x: int) -> int:
        return x


first = First()
nap = Sleep(NAP_SECONDS, name="nap")


class After(Step):
    def run_step(self, value: Computed[int] = Depends(first)) -> int:
        return value + 1


after = After()
first >> nap >> after
napping = Workflow(outputs=after, workflow_id="cli-napping", version="1")


class Render(Step):
    queue = "gpu"

    def run_step(self, image: str) -> str:
        return f"{image}.thumb"


render = Render()


class Publish(Step):
    def run_step(self, thumb: Computed[str] = Depends(render)) -> str:
        return f"published {thumb}"


gpu_then_cpu = Workflow(outputs=Publish(), workflow_id="cli-gpu", version="1")


class Gate(WaitForGate):
    """flows.WaitForGate, with a ``customer`` input for the workflow limit to key on."""

    def run_step(self, gate: str, customer: str = "-", limit: float = 60.0) -> str:
        return super().run_step(gate, limit)


exclusive = Workflow(
    outputs=Gate(name="hold", policies=[ConcurrencyLimit(1)]), workflow_id="cli-exclusive", version="1"
)

one_per_customer = Workflow(
    outputs=Gate(name="serve"),
    workflow_id="cli-one-per-customer",
    version="1",
    policies=[ConcurrencyLimit(1, key="customer")],
)

throttled = Workflow(
    outputs=Echo(name="tick", policies=[RateLimit(1, per=RATE_WINDOW_SECONDS)]),
    workflow_id="cli-throttled",
    version="1",
)
