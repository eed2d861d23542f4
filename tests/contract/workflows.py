"""Workflows the broker contract suite runs, built with the public authoring API.

Every workflow has an explicit ``workflow_id`` and its own step objects. Steps
record each execution in :data:`CALLS` (keyed by step name, and by the value
they received where a test needs per-instance counts), so tests can check that
a step ran exactly once. ``reset()`` runs before every test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

from fuseline import (
    AsyncStep,
    Computed,
    Condition,
    Depends,
    FunctionStep,
    Status,
    Step,
    Workflow,
    workflow_from_functions,
)
from fuseline.policies import RetryPolicy


class Calls:
    """Thread-safe execution counts (several workers may run steps at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[Hashable] = Counter()

    def hit(self, key: Hashable) -> int:
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def __getitem__(self, key: Hashable) -> int:
        with self._lock:
            return self._counts[key]

    def snapshot(self) -> dict[Hashable, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


CALLS = Calls()


class Switch:
    """A module-level flag that steps read, so a test can make a step fail, then succeed."""

    def __init__(self) -> None:
        self.failing = True


SWITCH = Switch()


def reset() -> None:
    """Forget what earlier tests did: counts, the switch, and inputs left by hand-written workers."""
    CALLS.reset()
    SWITCH.failing = True
    for value in list(globals().values()):
        if isinstance(value, Workflow):
            value.params.clear()


# -- one step --------------------------------------------------------------------------------
class Double(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("double")
        return 2 * x


SINGLE = Workflow(outputs=[Double()], workflow_id="contract-single", version="1")


# -- a sequence: first -> second ----------------------------------------------------------------
class First(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("first")
        return x + 1


first = First()


class Second(Step):
    def run_step(self, v: Computed[int] = Depends(first)) -> int:
        CALLS.hit("second")
        return v * 10


SEQUENCE = Workflow(outputs=[Second()], workflow_id="contract-sequence", version="1")


# -- an AND join: start -> left, right -> join ----------------------------------------------------
class Start(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("start")
        return x


start = Start()


class Left(Step):
    def run_step(self, v: Computed[int] = Depends(start)) -> int:
        CALLS.hit("left")
        return v + 1


class Right(Step):
    def run_step(self, v: Computed[int] = Depends(start)) -> int:
        CALLS.hit("right")
        return v + 2


left, right = Left(), Right()


class Join(Step):
    def run_step(self, a: Computed[int] = Depends(left), b: Computed[int] = Depends(right)) -> list[int]:
        CALLS.hit("join")
        return [a, b]


DIAMOND = Workflow(outputs=[Join()], workflow_id="contract-diamond", version="1")


# -- an OR join: origin -> fast, slow -> first_of --------------------------------------------------
class Origin(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("origin")
        return x


origin = Origin()


class Fast(Step):
    def run_step(self, v: Computed[int] = Depends(origin)) -> str:
        CALLS.hit("fast")
        return f"fast:{v}"


class Slow(Step):
    def run_step(self, v: Computed[int] = Depends(origin)) -> str:
        CALLS.hit("slow")
        return f"slow:{v}"


fast, slow = Fast(), Slow()


class FirstOf(Step):
    def run_step(self, v: Computed[str] = Depends([fast, slow])) -> str:
        CALLS.hit("first_of")
        return f"got {v}"


OR_JOIN = Workflow(outputs=[FirstOf()], workflow_id="contract-or-join", version="1")


# -- an OR group next to another dependency: origin -> early, late, gate; pick waits for gate too ------
class Early(Step):
    def run_step(self, v: Computed[int] = Depends(origin)) -> str:
        return f"early:{v}"


class Late(Step):
    def run_step(self, v: Computed[int] = Depends(origin)) -> str:
        return f"late:{v}"


class Gate(Step):
    def run_step(self, v: Computed[int] = Depends(origin)) -> int:
        return v


early, late, gate = Early(), Late(), Gate()


class Pick(Step):
    def run_step(self, v: Computed[str] = Depends([early, late]), g: Computed[int] = Depends(gate)) -> str:
        return f"{v} after {g}"


OR_AND = Workflow(outputs=[Pick()], workflow_id="contract-or-and", version="1")


# -- payload: a -> b (consumed), a >> c (order only), b -> d (consumed), c >> d (order only) -------
class PayA(Step):
    def run_step(self, x: int) -> int:
        return x


pay_a = PayA(name="a")


class PayB(Step):
    def run_step(self, v: Computed[int] = Depends(pay_a)) -> int:
        return v + 1


pay_b = PayB(name="b")


class PayC(Step):
    def run_step(self, y: str) -> str:
        return y


pay_c = PayC(name="c")
pay_a >> pay_c


class PayD(Step):
    def run_step(self, v: Computed[int] = Depends(pay_b)) -> int:
        return v * 2


pay_d = PayD(name="d")
pay_c >> pay_d

PAYLOAD = Workflow(outputs=[pay_d], workflow_id="contract-payload", version="1")


# -- branching: decide - "approve" >> approve; decide - "reject" >> reject; decide >> audit ----------
class Decide(Step):
    def run_step(self, choice: str) -> str:
        CALLS.hit("decide")
        return choice


class Approve(Step):
    def run_step(self) -> str:
        CALLS.hit("approve")
        return "approved"


class Reject(Step):
    def run_step(self) -> str:
        CALLS.hit("reject")
        return "rejected"


class Audit(Step):
    def run_step(self) -> str:
        CALLS.hit("audit")
        return "audited"


decide, approve, reject, audit = Decide(), Approve(), Reject(), Audit()
decide - "approve" >> approve
decide - "reject" >> reject
decide >> audit

BRANCH = Workflow(outputs=[approve, reject, audit], workflow_id="contract-branch", version="1")


# -- conditions and skips ---------------------------------------------------------------------------
class Measure(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("measure")
        return x


measure = Measure()


MORE_THAN_3 = Condition(lambda v: v > 3, "more than 3")


class Big(Step):
    def run_step(self, v: Computed[int] = Depends(measure, condition=MORE_THAN_3)) -> int:
        CALLS.hit("big")
        return v * 100


big = Big()


class AfterBig(Step):
    """Depends only on ``big``: SKIPPED without running when ``big`` is SKIPPED."""

    def run_step(self, v: Computed[int] = Depends(big)) -> int:
        CALLS.hit("after_big")
        return v + 1


class Combine(Step):
    """Depends on ``big`` and ``measure``: runs with None for ``big`` when it is SKIPPED."""

    def run_step(
        self, b: Computed[int | None] = Depends(big), m: Computed[int] = Depends(measure)
    ) -> list[int | None]:
        CALLS.hit("combine")
        return [b, m]


CONDITIONAL = Workflow(outputs=[AfterBig(), Combine()], workflow_id="contract-conditional", version="1")


# -- fail fast: root -> boom -> after_boom -> after_after; root -> independent ----------------------
class Root(Step):
    def run_step(self, x: int) -> int:
        return x


root = Root()


class Boom(Step):
    def run_step(self, v: Computed[int] = Depends(root)) -> int:
        CALLS.hit("boom")
        raise ValueError(f"boom on {v}")


boom = Boom()


class AfterBoom(Step):
    def run_step(self, v: Computed[int] = Depends(boom)) -> int:
        CALLS.hit("after_boom")
        return v


after_boom = AfterBoom()


class AfterAfter(Step):
    def run_step(self, v: Computed[int] = Depends(after_boom)) -> int:
        CALLS.hit("after_after")
        return v


class Independent(Step):
    def run_step(self, v: Computed[int] = Depends(root)) -> int:
        CALLS.hit("independent")
        return v + 1


FAIL_FAST = Workflow(outputs=[AfterAfter(), Independent()], workflow_id="contract-fail-fast", version="1")
#: How every FAIL_FAST instance ends: boom fails, its successors are cancelled, the rest succeeds.
FAIL_FAST_STATES = {
    "root": Status.SUCCEEDED,
    "boom": Status.FAILED,
    "after_boom": Status.CANCELLED,
    "after_after": Status.CANCELLED,
    "independent": Status.SUCCEEDED,
}


# -- RetryPolicy: retries the broker schedules (each a claim of its own) ------------------------------
class Flaky(Step):
    """Fails on its first two calls, then succeeds."""

    def run_step(self, x: int) -> str:
        if CALLS.hit("flaky") <= 2:
            raise ConnectionError("transient failure")
        return f"ok {x}"


FLAKY = Workflow(
    outputs=[Flaky(policies=[RetryPolicy(max_retries=2, wait=0.0)])],
    workflow_id="contract-flaky",
    version="1",
)


class AlwaysFails(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("always_fails")
        raise RuntimeError(f"permanent failure {x}")


always_fails = AlwaysFails(policies=[RetryPolicy(max_retries=1, wait=0.0)])


class AfterFailure(Step):
    def run_step(self, v: Computed[int] = Depends(always_fails)) -> int:
        CALLS.hit("after_failure")
        return v


EXHAUSTED = Workflow(outputs=[AfterFailure()], workflow_id="contract-exhausted", version="1")


# -- retry_instance: prepare -> switched -> finish; "switched" fails while SWITCH.failing ------------
class Prepare(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit("prepare")
        return x


prepare = Prepare()


class Switched(Step):
    def run_step(self, v: Computed[int] = Depends(prepare)) -> int:
        CALLS.hit("switched")
        if SWITCH.failing:
            raise RuntimeError("switched off")
        return v * 2


switched = Switched()


class Finish(Step):
    def run_step(self, v: Computed[int] = Depends(switched)) -> int:
        CALLS.hit("finish")
        return v + 1


SWITCHED = Workflow(outputs=[Finish()], workflow_id="contract-switched", version="1")


# -- values passing through: echo -> relay -------------------------------------------------------------
class Echo(Step):
    def run_step(self, value: Any) -> Any:
        return value


echo = Echo()


class Relay(Step):
    def run_step(self, v: Computed[Any] = Depends(echo)) -> Any:
        return v


ECHO = Workflow(outputs=[Relay()], workflow_id="contract-echo", version="1")


# -- a step returning a value that is not JSON ------------------------------------------------------
class Unserialisable(Step):
    def run_step(self, kind: str) -> Any:
        return {"set": {1, 2}, "object": object(), "nan": float("nan")}[kind]


NOT_JSON = Workflow(outputs=[Unserialisable()], workflow_id="contract-not-json", version="1")


# -- fan-out for concurrent workers: spread -> leaf_0..leaf_5 -> gather ---------------------------------
FAN_OUT_WIDTH = 6


class Spread(Step):
    def run_step(self, x: int) -> int:
        CALLS.hit(("spread", x))
        return x


spread = Spread()


class Leaf(Step):
    def run_step(self, v: Computed[int] = Depends(spread)) -> int:
        CALLS.hit((self.name, v))
        time.sleep(0.005)  # long enough for two workers to overlap
        return v


class Gather(Step):
    def run_step(self, x: int) -> str:
        CALLS.hit(("gather", x))
        return f"gathered {x}"


leaves = [Leaf(name=f"leaf_{i}") for i in range(FAN_OUT_WIDTH)]
gather = Gather()
leaves >> gather

FAN_OUT = Workflow(outputs=[gather], workflow_id="contract-fan-out", version="1")


# -- a step that outlives several leases (the engine's heartbeats must keep it) ------------------------
class Sleepy(Step):
    def run_step(self, seconds: float) -> str:
        CALLS.hit("sleepy")
        time.sleep(seconds)
        return "rested"


SLEEPY = Workflow(outputs=[Sleepy()], workflow_id="contract-sleepy", version="1")


# -- a step with one allowed claim ------------------------------------------------------------------
class OneShot(Step):
    max_attempts = 1

    def run_step(self) -> str:
        return "shot"


ONE_SHOT = Workflow(outputs=[OneShot()], workflow_id="contract-one-shot", version="1")


# -- AsyncStep and FunctionStep ---------------------------------------------------------------------
class Triple(AsyncStep):
    async def run_step(self, x: int) -> int:
        await asyncio.sleep(0)
        CALLS.hit("triple")
        return 3 * x


ASYNC = Workflow(outputs=[Triple()], workflow_id="contract-async", version="1")


def fn_source(x: int) -> int:
    CALLS.hit("fn_source")
    return x + 5


def fn_sink(v: int = Depends(fn_source)) -> str:
    CALLS.hit("fn_sink")
    return f"sink {v}"


FUNCTIONS = workflow_from_functions(fn_sink, workflow_id="contract-functions", version="1")


def make_number(x: int) -> int:
    CALLS.hit("make_number")
    return x * 7


number_step = FunctionStep(make_number, name="number")


async def async_label(n: int = Depends(number_step)) -> str:
    await asyncio.sleep(0)
    CALLS.hit("async_label")
    return f"label {n}"


label_step = FunctionStep(async_label, name="label")


class LabelInput(Step):
    """Bridges the named FunctionStep results into one output."""

    def run_step(
        self, n: Computed[int] = Depends(number_step), label: Computed[str] = Depends(label_step)
    ) -> list[Any]:
        return [n, label]


FUNCTION_STEPS = Workflow(outputs=[LabelInput()], workflow_id="contract-function-steps", version="1")


# -- schema conflicts: same id and version, different graph -------------------------------------------
class Alpha(Step):
    def run_step(self) -> str:
        return "alpha"


class Beta(Step):
    def run_step(self) -> str:
        return "beta"


def _alpha_then_beta() -> list[Step]:
    a, b = Alpha(), Beta()
    a >> b
    return [b]


CONFLICT_ORIGINAL = Workflow(outputs=_alpha_then_beta(), workflow_id="contract-conflict", version="1")
CONFLICT_CHANGED = Workflow(outputs=[Alpha(), Beta()], workflow_id="contract-conflict", version="1")
CONFLICT_NEXT_VERSION = Workflow(outputs=[Alpha(), Beta()], workflow_id="contract-conflict", version="2")
