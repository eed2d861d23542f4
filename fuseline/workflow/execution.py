"""Running one step: binding its arguments, applying policies, the lifecycle hooks.

This is the single place where step code is called, so ``Workflow.run``,
``ProcessEngine`` and hand-written workers behave the same.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MissingInput
from ..policies import StepPolicy
from .step import SETUP_PARAMETER, Step

#: How many innermost traceback frames a failed step's error keeps.
ERROR_TRACEBACK_FRAMES = 5


@dataclass(frozen=True)
class Outcome:
    """What running a step produced: its result, or that a condition skipped it."""

    result: Any
    skipped: bool = False


def step_label(step: Step) -> str:
    return step.name or step.default_name


def bind_arguments(
    step: Step, shared: Mapping[Step, Any], inputs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The keyword arguments of ``run_step``, or None when a condition skips the step.

    A dependency on a step that was skipped (absent from ``shared``) is None.
    For an OR group, the broker passes only the member that satisfied it; in
    any other setting the first member present wins.
    """
    kwargs: dict[str, Any] = {}
    for param in step.parameters:
        dependency = param.dependency
        if dependency is not None:
            targets = dependency.resolve()
            value = next((shared[t] for t in targets if t in shared), None)
            if dependency.condition is not None and not dependency.condition(value):
                return None
            kwargs[param.name] = value
        elif param.name == SETUP_PARAMETER:
            continue
        elif param.name in inputs:
            kwargs[param.name] = inputs[param.name]
        elif not param.has_default:
            raise MissingInput(step_label(step), param.name)
    return kwargs


def run_step(
    step: Step,
    shared: Mapping[Step, Any],
    inputs: Mapping[str, Any],
    policies: Sequence[StepPolicy],
    before_first_run: Callable[[Step, dict[Step, Any]], None],
) -> Outcome:
    """Run ``step`` once: conditions, ``before_all`` (via the callback), setup, policies, teardown."""
    kwargs = bind_arguments(step, shared, inputs)
    if kwargs is None:
        return Outcome(None, skipped=True)
    shared_dict = dict(shared)
    before_first_run(step, shared_dict)
    if step.is_async:
        return Outcome(run_coroutine(_run_async(step, shared_dict, kwargs, policies)))
    setup_res = step.setup(shared_dict)
    if any(p.name == SETUP_PARAMETER for p in step.parameters):
        kwargs[SETUP_PARAMETER] = setup_res

    def call() -> Any:
        return step._call_body(kwargs)

    for policy in reversed(policies):
        call = functools.partial(policy.execute, step, call)
    result = call()
    return Outcome(step.teardown(shared_dict, setup_res, result))


async def _run_async(
    step: Step, shared: dict[Step, Any], kwargs: dict[str, Any], policies: Sequence[StepPolicy]
) -> Any:
    setup_res = await _maybe_await(step.setup(shared))
    if any(p.name == SETUP_PARAMETER for p in step.parameters):
        kwargs[SETUP_PARAMETER] = setup_res

    def call() -> Any:
        return step._call_body(kwargs)

    for policy in reversed(policies):
        call = functools.partial(policy.execute_async, step, call)
    result = await call()
    return await _maybe_await(step.teardown(shared, setup_res, result))


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop.

    A running loop in this thread cannot be re-entered, so the coroutine then
    gets a fresh loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fuseline-async-step")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def describe_error(exc: BaseException) -> str:
    """``Type: message`` plus the innermost traceback frames: what a FAILED step records."""
    head = f"{type(exc).__name__}: {exc}".rstrip()
    frames = traceback.extract_tb(exc.__traceback__)[-ERROR_TRACEBACK_FRAMES:]
    if not frames:
        return head
    tail = "".join(traceback.format_list(frames)).rstrip()
    return f"{head}\nTraceback (innermost {len(frames)} frames):\n{tail}"
