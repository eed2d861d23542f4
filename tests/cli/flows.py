"""Workflows the CLI tests run through the real ``fuseline`` console script.

The tests copy this file into the folder the commands run in, so
``fuseline worker run flows:diamond`` imports it as the module ``flows``
from the current folder, exactly as a user's module would be.

- ``diamond``: A -> {B, C} -> D, summing its inputs (``x + y`` doubled, plus one, ...).
- ``diamond_changed``: a different graph under the same id and version as
  ``diamond``, to provoke a schema conflict.
- ``sleepy``: one step that appends a line to the file ``log`` when it
  starts, then sleeps ``seconds`` (for the SIGTERM tests).
- ``flaky``: ``prepare -> fragile``; ``fragile`` fails while the file
  ``marker`` exists (so ``instances retry`` after deleting it succeeds).
- ``gated``: ``wait_for_gate -> after_gate``; the first step creates
  ``<gate>.waiting``, then blocks until the file ``gate`` appears (for
  cancelling a running instance).
- ``odd_name``: a workflow id with square brackets (rich markup) in it.
- ``not_a_workflow``: a plain object, for the usage-error tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fuseline import Computed, Depends, Step, Workflow

# -- diamond: A -> {B, C} -> D -----------------------------------------------------------------


class A(Step):
    def run_step(self, x: int, y: int = 0) -> int:
        return x + y


a = A()


class B(Step):
    def run_step(self, value: Computed[int] = Depends(a)) -> int:
        return value * 2


class C(Step):
    def run_step(self, value: Computed[int] = Depends(a)) -> int:
        return value + 1


b, c = B(), C()


class D(Step):
    def run_step(self, left: Computed[int] = Depends(b), right: Computed[int] = Depends(c)) -> int:
        return left + right


d = D()

#: With x and y: (x + y) * 2 + (x + y + 1).
diamond = Workflow(outputs=d, workflow_id="cli-diamond", version="1")


class Lonely(Step):
    def run_step(self, x: int) -> int:
        return x


diamond_changed = Workflow(outputs=Lonely(), workflow_id="cli-diamond", version="1")

# -- sleepy: one step that sleeps ----------------------------------------------------------------


class Nap(Step):
    """Sleeps ``seconds`` on its first execution, ``again`` (default: ``seconds``) on later ones."""

    def run_step(self, seconds: float, log: str, again: float | None = None) -> str:
        ledger = Path(log)
        earlier = ledger.read_text().count("\n") if ledger.exists() else 0
        with ledger.open("a") as lines:
            lines.write(f"started pid={os.getpid()}\n")
        nap = seconds if earlier == 0 or again is None else again
        time.sleep(nap)
        return f"slept {nap}"


sleepy = Workflow(outputs=Nap(), workflow_id="cli-sleepy", version="1")

# -- flaky: fails while a marker file exists ------------------------------------------------------


class Prepare(Step):
    def run_step(self, marker: str) -> str:
        return "prepared"


prepare = Prepare()


class Fragile(Step):
    def run_step(self, marker: str, ready: Computed[str] = Depends(prepare)) -> str:
        if Path(marker).exists():
            # Brackets and a path in the message, as real errors often have.
            raise RuntimeError(f"marker file is present [{marker}]")
        return f"{ready} and done"


flaky = Workflow(outputs=Fragile(), workflow_id="cli-flaky", version="1")

# -- gated: the first step blocks until a file appears -----------------------------------------


class WaitForGate(Step):
    def run_step(self, gate: str, limit: float = 60.0) -> str:
        Path(f"{gate}.waiting").touch()
        deadline = time.monotonic() + limit
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate} never opened")
            time.sleep(0.05)
        return "opened"


wait_for_gate = WaitForGate()


class AfterGate(Step):
    def run_step(self, opened: Computed[str] = Depends(wait_for_gate)) -> str:
        return f"after {opened}"


gated = Workflow(outputs=AfterGate(), workflow_id="cli-gated", version="1")

#: A workflow id with characters that mean something to rich's markup.
odd_name = Workflow(outputs=Lonely(), workflow_id="cli-[/odd] [bold]", version="1")

not_a_workflow = {"this": "is a dict"}
