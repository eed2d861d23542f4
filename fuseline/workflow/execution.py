"""Executing one step once: binding its arguments, applying step policies, its hooks.

This is the single place where step code is called, so ``Workflow.run``,
``ProcessEngine`` and hand-written workers behave the same. It writes no
state anywhere: the caller decides where a step's outcome is kept.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MissingInput
from .coroutines import maybe_await, run_coroutine
from .step import SETUP_PARAMETER, Step

if TYPE_CHECKING:
    from .lifecycle import StepLifecycle
    from .policies import StepPolicy

#: How many innermost traceback frames a failed step's error keeps.
ERROR_TRACEBACK_FRAMES = 5


@dataclass(frozen=True)
class Outcome:
    """What executing a step produced: its result, or that a condition skipped it."""

    result: Any
    skipped: bool = False


def bind_arguments(
    step: Step, shared: Mapping[Step, Any], inputs: Mapping[str, Any], name: str | None = None
) -> dict[str, Any] | None:
    """The keyword arguments of ``run_step``, or None when a condition skips the step.

    A dependency on a step that was skipped (absent from ``shared``) is None.
    For an OR group, the broker passes only the member that satisfied it; in
    any other setting the first member present wins. ``name`` is the step's
    name in its workflow, for the :class:`~fuseline.errors.MissingInput` message.
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
            raise MissingInput(name or step.label, param.name)
    return kwargs


def invoke_step(
    step: Step,
    shared: Mapping[Step, Any],
    inputs: Mapping[str, Any],
    policies: Sequence[StepPolicy],
    lifecycle: StepLifecycle,
    name: str | None = None,
) -> Outcome:
    """Execute ``step`` once and return its :class:`Outcome`, or raise what the step raised.

    In order: its conditions (a false one skips it), ``before_all`` (once
    per ``lifecycle``), ``setup``, ``run_step`` wrapped in ``policies``
    (first = outermost), ``teardown``.
    """
    kwargs = bind_arguments(step, shared, inputs, name)
    if kwargs is None:
        return Outcome(None, skipped=True)
    shared_dict = dict(shared)
    lifecycle.prepare(step, shared_dict)
    if step.is_async:
        return Outcome(run_coroutine(_invoke_async(step, shared_dict, kwargs, policies)))
    setup_res = step.setup(shared_dict)
    result = _wrapped(step, _with_setup(step, kwargs, setup_res), policies, asynchronous=False)()
    return Outcome(step.teardown(shared_dict, setup_res, result))


async def _invoke_async(
    step: Step, shared: dict[Step, Any], kwargs: dict[str, Any], policies: Sequence[StepPolicy]
) -> Any:
    setup_res = await maybe_await(step.setup(shared))
    result = await _wrapped(step, _with_setup(step, kwargs, setup_res), policies, asynchronous=True)()
    return await maybe_await(step.teardown(shared, setup_res, result))


def _with_setup(step: Step, kwargs: dict[str, Any], setup_res: Any) -> dict[str, Any]:
    """The arguments, with what ``setup`` returned when ``run_step`` asks for it."""
    if any(p.name == SETUP_PARAMETER for p in step.parameters):
        kwargs[SETUP_PARAMETER] = setup_res
    return kwargs


def _wrapped(
    step: Step, kwargs: dict[str, Any], policies: Sequence[StepPolicy], *, asynchronous: bool
) -> Callable[[], Any]:
    """``run_step`` with the policies around it, the first outermost (``execute_async`` for async)."""

    def call() -> Any:
        return step._call_body(kwargs)

    for policy in reversed(policies):
        call = functools.partial(policy.execute_async if asynchronous else policy.execute, step, call)
    return call


def describe_error(exc: BaseException) -> str:
    """``Type: message`` plus the innermost traceback frames: what a FAILED step records."""
    head = f"{type(exc).__name__}: {exc}".rstrip()
    frames = traceback.extract_tb(exc.__traceback__)[-ERROR_TRACEBACK_FRAMES:]
    if not frames:
        return head
    tail = "".join(traceback.format_list(frames)).rstrip()
    return f"{head}\nTraceback (innermost {len(frames)} frames):\n{tail}"
