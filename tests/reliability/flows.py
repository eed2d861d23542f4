"""Workflows the reliability tests run, in the test process and in ``fuseline worker run``.

Imported as ``tests.reliability.flows`` everywhere (workers get the
repository on ``PYTHONPATH``), so every process builds the same schemas.

- ``diamond``: A -> {B, C} -> D (an AND join), for drains and the masking test.
- ``nap``: one step that sleeps longer than its lease, and reports the
  worker's own wall clocks (to prove a clock offset was in effect).
- ``bad_results``: ``produce`` returns a value JSON cannot hold (chosen by the
  input ``kind``), next to an independent ``bystander``.
- ``measured``: ``build`` returns a ~100 MB value and records the process's
  peak RSS before reporting it; ``probe`` records it afterwards.
- ``evil``: ids, version and step names full of SQL, quotes, backslashes and emoji.
- ``stamp``: one step that reports the wall-clock time it started, next to the
  dispatch time it was given (pickup latency) and the length of ``blob``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fuseline import Computed, Depends, Step, Workflow

# -- diamond ---------------------------------------------------------------------------------------


class Top(Step):
    def run_step(self, x: int) -> int:
        logging.getLogger("tests.reliability.flows").debug("top of a diamond got x=%r", x)
        return x


top = Top()


class Left(Step):
    def run_step(self, value: Computed[int] = Depends(top)) -> int:
        return value * 2


class Right(Step):
    def run_step(self, value: Computed[int] = Depends(top)) -> int:
        return value + 1


left, right = Left(), Right()


class Bottom(Step):
    def run_step(self, a: Computed[int] = Depends(left), b: Computed[int] = Depends(right)) -> int:
        return a + b


#: x -> 2x + (x + 1)
diamond = Workflow(outputs=Bottom(), workflow_id="reliability-diamond", version="1")

# -- nap: longer than the lease ------------------------------------------------------------------


class Nap(Step):
    def run_step(self, seconds: float) -> dict[str, float]:
        time.sleep(seconds)
        return {
            "time": time.time(),
            "time_ns": time.time_ns() / 1e9,
            "datetime": datetime.now(timezone.utc).timestamp(),
            "pid": os.getpid(),
        }


nap = Workflow(outputs=Nap(), workflow_id="reliability-nap", version="1")

# -- bad results -------------------------------------------------------------------------------

BAD_VALUES: dict[str, tuple[Any, str]] = {
    # kind: (value, the type name the error must show)
    "nan": (math.nan, "float"),
    "inf": (math.inf, "float"),
    "-inf": (-math.inf, "float"),
    "object": (object(), "object"),
    "set": ({1, 2}, "set"),
    "tuple-key": ({(1, 2): "a tuple is no JSON key"}, "dict"),
    "lone-surrogate": ("\ud800", "str"),
}


class Produce(Step):
    def run_step(self, kind: str) -> Any:
        if kind == "ok":
            return {"fine": True}
        return BAD_VALUES[kind][0]


class Bystander(Step):
    def run_step(self, kind: str) -> str:
        return f"unaffected by {kind}"


bad_results = Workflow(outputs=[Produce(), Bystander()], workflow_id="reliability-bad-results", version="1")

# -- measured: a 100 MB result ------------------------------------------------------------------


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


class Measure(Step):
    def run_step(self, mode: str, folder: str) -> Any:
        if mode == "build":
            value = [f"{n:07d}" + "m" * 999_993 for n in range(100)]  # 100 strings of 1 MB
            Path(folder, "after-build").write_text(str(peak_rss()))
            return value
        Path(folder, "after-report").write_text(str(peak_rss()))
        return "probed"


measured = Workflow(outputs=Measure(), workflow_id="reliability-measured", version="1")

# -- evil names ------------------------------------------------------------------------------------

EVIL_WORKFLOW_ID = '\'; DROP TABLE x; -- "quoted" \\back\\slash 🚀 Ωμέγα'
EVIL_VERSION = "v'1\"; DROP TABLE x; --\\🚀"
EVIL_FIRST = "'; DROP TABLE x; --"
EVIL_SECOND = 'say "hi" \\ it\'s 🚀 %s %(x)s {0} :name $1'


class EvilFirst(Step):
    def run_step(self, payload: Any) -> Any:
        return payload


evil_first = EvilFirst(name=EVIL_FIRST)


class EvilSecond(Step):
    def run_step(self, value: Computed[Any] = Depends(evil_first)) -> Any:
        return {"echo": value}


evil = Workflow(outputs=EvilSecond(name=EVIL_SECOND), workflow_id=EVIL_WORKFLOW_ID, version=EVIL_VERSION)

# -- stamp: when a step starts, for pickup latency ----------------------------------------------


class Stamp(Step):
    def run_step(self, dispatched_at: float, blob: str) -> dict[str, float]:
        return {"dispatched_at": dispatched_at, "started_at": time.time(), "blob_chars": len(blob)}


stamp = Workflow(outputs=Stamp(), workflow_id="reliability-stamp", version="1")
