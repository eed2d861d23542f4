"""Policies: RetryPolicy, StepTimeoutPolicy, custom StepPolicy and WorkflowPolicy, _execute_step."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fuseline import AsyncStep, Computed, Depends, Status, Step, Workflow, WorkflowSchema
from fuseline.errors import StepTimeout
from fuseline.policies import (
    Policy,
    RetryPolicy,
    StepPolicy,
    StepTimeoutPolicy,
    TooManyAbandonedThreads,
    WorkflowPolicy,
    policy_from_config,
)
from fuseline.workflow.policies import MAX_ABANDONED_THREADS


class Flaky(Step):
    """Fails ``failures`` times with a numbered error, then returns the attempt number."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        self.failures = failures
        self.calls: list[float] = []
        super().__init__(**kwargs)

    def run_step(self) -> int:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"failure {len(self.calls)}")
        return len(self.calls)


# -- RetryPolicy ---------------------------------------------------------------------------


def test_retry_policy_retries_until_the_step_succeeds() -> None:
    step = Flaky(2, policies=[RetryPolicy(max_retries=2)])
    assert Workflow(step).run() == 3
    assert len(step.calls) == 3


def test_retry_policy_reraises_the_last_error_when_retries_are_exhausted() -> None:
    step = Flaky(10, policies=[RetryPolicy(max_retries=2)])
    with pytest.raises(ConnectionError, match="failure 3"):
        Workflow(step).run()
    assert len(step.calls) == 3


def test_retry_policy_with_zero_retries_runs_once() -> None:
    step = Flaky(1, policies=[RetryPolicy(max_retries=0)])
    with pytest.raises(ConnectionError, match="failure 1"):
        Workflow(step).run()
    assert len(step.calls) == 1


def test_retry_delays_grow_by_the_backoff_factor() -> None:
    policy = RetryPolicy(max_retries=5, wait=0.5, backoff=3.0)
    assert [policy.delay(n) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_retry_delays_are_capped_by_max_wait() -> None:
    policy = RetryPolicy(max_retries=5, wait=1.0, backoff=2.0, max_wait=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_retry_policy_waits_between_attempts() -> None:
    step = Flaky(3, policies=[RetryPolicy(max_retries=3, wait=0.02, backoff=2.0, max_wait=0.05)])
    Workflow(step).run()
    gaps = [later - earlier for earlier, later in zip(step.calls, step.calls[1:], strict=False)]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.02, 0.04, 0.05], strict=True):
        assert gap >= expected * 0.95


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"wait": -1.0}, {"backoff": 0.5}, {"max_wait": -2.0}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_policy_retries_an_async_step() -> None:
    calls: list[int] = []

    class FlakyAsync(AsyncStep):
        async def run_step(self) -> str:
            calls.append(1)
            await asyncio.sleep(0)
            if len(calls) < 3:
                raise TimeoutError("slow upstream")
            return "ok"

    assert Workflow(FlakyAsync(policies=[RetryPolicy(max_retries=2)])).run() == "ok"
    assert len(calls) == 3


def test_a_workflow_level_retry_policy_applies_to_every_step() -> None:
    first = Flaky(1, name="first")

    class Second(Flaky):
        def run_step(self, upstream: Computed[int] = Depends(first)) -> int:  # type: ignore[override]
            return super().run_step() * 10 + upstream

    second = Second(2, name="second")

    workflow = Workflow(second, policies=[RetryPolicy(max_retries=2)])

    assert workflow.run() == 32
    assert (len(first.calls), len(second.calls)) == (2, 3)
    assert workflow.to_schema().policies == (
        {"type": "retry", "config": {"max_retries": 2, "wait": 0.0, "backoff": 2.0, "max_wait": None}},
    )


# -- StepTimeoutPolicy ----------------------------------------------------------------------


def test_timeout_policy_fails_a_slow_sync_step_with_step_timeout() -> None:
    release = threading.Event()

    class Slow(Step):
        def run_step(self) -> str:
            release.wait(5)
            return "too late"

    step = Slow(policies=[StepTimeoutPolicy(0.05)])
    workflow = Workflow(step)
    started = time.monotonic()
    try:
        with pytest.raises(StepTimeout, match=r"step 'slow' ran longer than 0\.05 s"):
            workflow._execute_step(step, {}, {})
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert step.state is Status.FAILED


def test_timeout_policy_fails_a_slow_async_step_with_step_timeout() -> None:
    cancelled: list[bool] = []

    class SlowAsync(AsyncStep):
        async def run_step(self) -> str:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return "too late"

    started = time.monotonic()
    with pytest.raises(StepTimeout, match="slow_async"):
        Workflow(SlowAsync(policies=[StepTimeoutPolicy(0.05)])).run()
    assert time.monotonic() - started < 2
    assert cancelled == [True]


def test_timeout_policy_returns_the_result_and_errors_of_a_fast_step() -> None:
    class Fast(Step):
        def run_step(self, x: int) -> int:
            if x < 0:
                raise ValueError("negative")
            return x + 1

    workflow = Workflow(Fast(policies=[StepTimeoutPolicy(5)]))
    assert workflow.run({"x": 1}) == 2
    with pytest.raises(ValueError, match="negative"):
        workflow.run({"x": -1})


def test_timeout_policy_needs_a_positive_duration() -> None:
    with pytest.raises(ValueError):
        StepTimeoutPolicy(0)


def test_retry_outside_timeout_retries_a_timed_out_attempt() -> None:
    attempts: list[int] = []
    release = threading.Event()

    class SlowOnce(Step):
        def run_step(self) -> str:
            attempts.append(1)
            if len(attempts) == 1:
                release.wait(5)
            return "second try"

    step = SlowOnce(policies=[RetryPolicy(max_retries=1), StepTimeoutPolicy(0.05)])
    try:
        assert Workflow(step).run() == "second try"
    finally:
        release.set()
    assert len(attempts) == 2


# -- serialisation --------------------------------------------------------------------------


class Tagging(StepPolicy):
    """A custom policy: wraps the call and tags the result."""

    def __init__(self, tag: str = "x", log: list[str] | None = None) -> None:
        self.tag = tag
        self.log = log if log is not None else []

    def to_config(self) -> dict[str, Any]:
        return {"tag": self.tag}

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        self.log.append(f"{self.tag}:before")
        result = call()
        self.log.append(f"{self.tag}:after")
        return f"{self.tag}({result})"


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(max_retries=4, wait=0.25, backoff=1.5, max_wait=2.0),
        RetryPolicy(),
        StepTimeoutPolicy(12.5),
        Tagging("audit"),
    ],
    ids=["retry", "retry-defaults", "timeout", "custom"],
)
def test_policies_come_back_from_their_schema_config(policy: Policy) -> None:
    description = policy.describe()

    rebuilt = policy_from_config(description)

    assert type(rebuilt) is type(policy)
    assert rebuilt.describe() == description


def test_policy_descriptions_use_their_kind() -> None:
    assert RetryPolicy(1).describe()["type"] == "retry"
    assert StepTimeoutPolicy(1).describe() == {"type": "timeout", "config": {"seconds": 1}}
    assert Tagging("t").describe() == {"type": "Tagging", "config": {"tag": "t"}}


def test_policies_survive_the_schema_json_round_trip() -> None:
    class Work(Step):
        def run_step(self) -> int:
            return 1

    policies = [RetryPolicy(max_retries=3, wait=0.1), StepTimeoutPolicy(9)]
    workflow = Workflow(Work(policies=policies), workflow_id="p", policies=[Tagging("wf")])

    schema = WorkflowSchema.from_json(workflow.to_schema().to_json())
    step_policies = [policy_from_config(d) for d in schema.steps[0]["policies"]]
    assert [p.describe() for p in step_policies] == [p.describe() for p in policies]
    assert [policy_from_config(d).describe() for d in schema.policies] == [
        {"type": "Tagging", "config": {"tag": "wf"}}
    ]


def test_policy_from_config_refuses_an_unknown_type() -> None:
    with pytest.raises(ValueError, match=r"unknown policy type 'os\.system'"):
        policy_from_config({"type": "os.system", "config": {}})


# -- custom StepPolicy -----------------------------------------------------------------------


def test_a_custom_step_policy_wraps_the_execution() -> None:
    log: list[str] = []

    class Work(Step):
        def run_step(self) -> str:
            log.append("run")
            return "body"

    assert Workflow(Work(policies=[Tagging("t", log)])).run() == "t(body)"
    assert log == ["t:before", "run", "t:after"]


def test_policies_attached_first_wrap_outermost() -> None:
    log: list[str] = []

    class Work(Step):
        def run_step(self) -> str:
            log.append("run")
            return "body"

    step = Work(policies=[Tagging("middle", log), Tagging("inner", log)])
    workflow = Workflow(step, policies=[Tagging("outer", log)])

    # workflow policies come before the step's own
    assert workflow.run() == "outer(middle(inner(body)))"
    assert log == [
        "outer:before",
        "middle:before",
        "inner:before",
        "run",
        "inner:after",
        "middle:after",
        "outer:after",
    ]


# -- WorkflowPolicy --------------------------------------------------------------------------


class Recorder(WorkflowPolicy):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_workflow_start(self, workflow: Workflow) -> None:
        self.calls.append(("workflow_start", workflow.workflow_id))

    def on_step_start(self, workflow: Workflow, step: Step) -> None:
        self.calls.append(("step_start", workflow.name_of(step)))

    def on_step_success(self, workflow: Workflow, step: Step, result: Any) -> None:
        self.calls.append(("step_success", workflow.name_of(step), result))

    def on_step_failure(self, workflow: Workflow, step: Step, error: BaseException) -> None:
        self.calls.append(("step_failure", workflow.name_of(step), str(error)))

    def on_workflow_finished(self, workflow: Workflow, status: str, result: Any) -> None:
        self.calls.append(("workflow_finished", status, result))


def chain(fail_second: bool = False) -> tuple[Step, Step]:
    class First(Step):
        def run_step(self, x: int) -> int:
            return x + 1

    first = First()

    class Second(Step):
        def run_step(self, v: Computed[int] = Depends(first)) -> int:
            if fail_second:
                raise KeyError("missing")
            return v * 2

    return first, Second()


def test_workflow_policy_hooks_are_called_in_order() -> None:
    recorder = Recorder()
    _, second = chain()
    workflow = Workflow(second, workflow_id="hooks", policies=[recorder])

    assert workflow.run({"x": 1}) == 4
    assert recorder.calls == [
        ("workflow_start", "hooks"),
        ("step_start", "first"),
        ("step_success", "first", 2),
        ("step_start", "second"),
        ("step_success", "second", 4),
        ("workflow_finished", "SUCCEEDED", 4),
    ]


def test_workflow_policy_hears_about_a_failure() -> None:
    recorder = Recorder()
    _, second = chain(fail_second=True)
    workflow = Workflow(second, workflow_id="hooks", policies=[recorder])

    with pytest.raises(KeyError):
        workflow.run({"x": 1})
    assert recorder.calls == [
        ("workflow_start", "hooks"),
        ("step_start", "first"),
        ("step_success", "first", 2),
        ("step_start", "second"),
        ("step_failure", "second", "'missing'"),
        ("workflow_finished", "FAILED", None),
    ]


# -- _execute_step --------------------------------------------------------------------------


def test_execute_step_returns_the_result_and_marks_the_step_succeeded() -> None:
    recorder = Recorder()
    first, second = chain()
    workflow = Workflow(second, policies=[recorder])

    assert workflow._execute_step(second, {first: 20}) == 40
    assert second.state is Status.SUCCEEDED
    assert recorder.calls == [("step_start", "second"), ("step_success", "second", 40)]


def test_execute_step_reads_inputs_from_params() -> None:
    first, second = chain()
    workflow = Workflow(second)
    workflow.params.update({"x": 4})

    assert workflow._execute_step(first, {}) == 5
    assert first.state is Status.SUCCEEDED


def test_execute_step_raises_and_marks_the_step_failed() -> None:
    first, second = chain(fail_second=True)
    workflow = Workflow(second)

    with pytest.raises(KeyError, match="missing"):
        workflow._execute_step(second, {first: 1})
    assert second.state is Status.FAILED


def test_execute_step_marks_a_step_skipped_by_its_condition() -> None:
    recorder = Recorder()

    class Source(Step):
        def run_step(self) -> int:
            return 0

    source = Source()

    class Guarded(Step):
        def run_step(self, v: int = Depends(source, condition=lambda v: v > 0)) -> str:
            return "ran"

    guarded = Guarded()
    workflow = Workflow(guarded, policies=[recorder])

    assert workflow._execute_step(guarded, {source: 0}) is None
    assert guarded.state is Status.SKIPPED
    assert workflow._execute_step(guarded, {source: 1}) == "ran"
    assert guarded.state is Status.SUCCEEDED
    assert recorder.calls == [
        ("step_start", "guarded"),
        ("step_start", "guarded"),
        ("step_success", "guarded", "ran"),
    ]


def test_execute_step_applies_step_and_workflow_retry_policies() -> None:
    step = Flaky(2, policies=[RetryPolicy(max_retries=1)])
    workflow = Workflow(step, policies=[RetryPolicy(max_retries=1)])

    # the outer (workflow) retry reruns the inner (step) retry: 2 x 2 attempts
    assert workflow._execute_step(step, {}) == 3
    assert step.state is Status.SUCCEEDED
    assert len(step.calls) == 3


# -- abandoned threads of timed-out sync steps ----------------------------------------------


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_timed_sync_steps_are_refused_while_too_many_timed_out_threads_still_run() -> None:
    """Regression: every timeout of a sync step abandoned one more thread, without limit."""
    release = threading.Event()

    class Hung(Step):
        def run_step(self) -> str:
            release.wait(30)
            return "late"

    step = Hung(policies=[StepTimeoutPolicy(0.01)])
    workflow = Workflow(step)
    refused: TooManyAbandonedThreads | None = None
    try:
        for _ in range(MAX_ABANDONED_THREADS + 1):
            try:
                workflow._execute_step(step, {}, {})
            except TooManyAbandonedThreads as exc:
                refused = exc
                break
            except StepTimeout:
                continue
        assert refused is not None, "a timed sync step started past the cap"
        assert isinstance(refused, StepTimeout)
        assert refused.running == MAX_ABANDONED_THREADS == refused.limit
        message = str(refused)
        assert f"{MAX_ABANDONED_THREADS} threads of sync steps that timed out are still running" in message
        assert "'hung'" in message
        # a refused call started no thread of its own
        assert StepTimeoutPolicy.abandoned_threads() == MAX_ABANDONED_THREADS
        assert step.state is Status.FAILED
    finally:
        release.set()

    assert wait_until(lambda: StepTimeoutPolicy.abandoned_threads() == 0)
    fast = Flaky(0, policies=[StepTimeoutPolicy(5)])
    assert Workflow(fast).run() == 1
