"""Policies: behaviour attached to steps and workflows, applied wherever a step runs.

A :class:`StepPolicy` wraps the execution of ``run_step`` (retries, timeouts);
a :class:`WorkflowPolicy` is told when steps start, succeed and fail. Both are
applied by ``Workflow.execute_step`` (and so by ``Workflow._execute_step``),
so the provided engines and hand-written workers apply them the same way.

Policies are described in the workflow schema as ``{"type": ..., "config":
{...}}`` and rebuilt from it with :func:`policy_from_config`. Only registered
policy classes are rebuilt: nothing read from a schema is imported or
evaluated. This module holds the one registry; ``fuseline.policies``
re-exports its public names.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import StepTimeout
from .step import current_name

if TYPE_CHECKING:
    from .step import Step
    from .workflow import Workflow

_REGISTRY: dict[str, type[Policy]] = {}

#: How many threads of timed-out sync steps may still be running in this process
#: before :class:`StepTimeoutPolicy` refuses to start another timed sync call.
MAX_ABANDONED_THREADS = 32


class Policy:
    """Base class of all policies.

    Subclasses get a schema type name: ``kind`` if they set it, else their
    class name. ``to_config`` must return JSON values that ``from_config``
    (by default the constructor's keyword arguments) accepts back.
    """

    kind: ClassVar[str] = "policy"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__
        _REGISTRY[cls.kind] = cls

    def to_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Policy:
        return cls(**config)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "config": self.to_config()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"{type(self).__name__}({args})"


def policy_from_config(description: dict[str, Any]) -> Policy:
    """Rebuild a policy from its schema description ``{"type", "config"}``."""
    kind = description.get("type")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown policy type {kind!r}; known: {sorted(_REGISTRY)}")
    return cls.from_config(dict(description.get("config") or {}))


class StepPolicy(Policy):
    """Wraps each execution of a step's ``run_step``.

    ``execute`` receives the step and a zero-argument ``call`` that runs the
    step body (and any inner policies); it returns the result or raises.
    Async steps go through ``execute_async`` instead, whose ``call`` returns
    an awaitable. Policies attached first wrap outermost.
    """

    kind = "step"

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        return call()

    async def execute_async(self, step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
        return await call()


class WorkflowPolicy(Policy):
    """Observes a workflow's steps.

    ``on_step_*`` hooks run in the process that runs the step (a worker, or
    the caller of ``Workflow.run``). ``on_workflow_start`` and
    ``on_workflow_finished`` run around ``Workflow.run`` (and
    ``Workflow.run_instance``) only: on a broker no single process sees a
    whole instance.
    """

    kind = "workflow"

    def on_workflow_start(self, workflow: Workflow) -> None:
        pass

    def on_step_start(self, workflow: Workflow, step: Step) -> None:
        pass

    def on_step_success(self, workflow: Workflow, step: Step, result: Any) -> None:
        pass

    def on_step_failure(self, workflow: Workflow, step: Step, error: BaseException) -> None:
        pass

    def on_workflow_finished(self, workflow: Workflow, status: str, result: Any) -> None:
        pass


class RetryPolicy(StepPolicy):
    """Run the step again when it raises, up to ``max_retries`` more times.

    The n-th retry waits ``wait * backoff ** (n - 1)`` seconds, at most
    ``max_wait``. These retries happen inside one claim of the step; the
    broker's attempt counter is separate and only counts lost workers.
    """

    kind = "retry"

    def __init__(
        self,
        max_retries: int = 3,
        wait: float = 0.0,
        backoff: float = 2.0,
        max_wait: float | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if wait < 0 or backoff < 1 or (max_wait is not None and max_wait < 0):
            raise ValueError("wait and max_wait must be >= 0 and backoff >= 1")
        self.max_retries = max_retries
        self.wait = wait
        self.backoff = backoff
        self.max_wait = max_wait

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        seconds = self.wait * self.backoff ** (retry - 1)
        return min(seconds, self.max_wait) if self.max_wait is not None else seconds

    def to_config(self) -> dict[str, Any]:
        return {
            "max_retries": self.max_retries,
            "wait": self.wait,
            "backoff": self.backoff,
            "max_wait": self.max_wait,
        }

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        retry = 0
        while True:
            try:
                return call()
            except Exception:
                retry += 1
                if retry > self.max_retries:
                    raise
                time.sleep(self.delay(retry))

    async def execute_async(self, step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
        retry = 0
        while True:
            try:
                return await call()
            except Exception:
                retry += 1
                if retry > self.max_retries:
                    raise
                await asyncio.sleep(self.delay(retry))


class TooManyAbandonedThreads(StepTimeout):
    """A timed sync step was refused: too many timed-out steps are still running in the background.

    Each sync step that times out leaves its thread running (Python cannot
    stop it). Past :data:`MAX_ABANDONED_THREADS` such threads, starting more
    would let a hung dependency exhaust the process, so the step fails at
    once instead; it can run again once some of them finish.
    """

    def __init__(self, step_name: str, running: int, limit: int) -> None:
        self.step_name = step_name
        self.running = running
        self.limit = limit
        super().__init__(
            f"step {step_name!r} was not started: {running} threads of sync steps that timed out "
            f"are still running in this process (limit {limit}); find out why those steps hang, or "
            "run them as async steps, which are cancelled at the deadline"
        )


class _AbandonedThreads:
    """The threads of timed-out sync steps that are still running, counted per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def add(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.add(thread)

    def discard(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)

    def running(self) -> int:
        """How many are still alive (a thread that ended just after its timeout is dropped here)."""
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            return len(self._threads)


_ABANDONED = _AbandonedThreads()


class StepTimeoutPolicy(StepPolicy):
    """Fail the step with :class:`~fuseline.errors.StepTimeout` after ``seconds``.

    Async steps are cancelled at the deadline. A plain function cannot be
    interrupted in Python, so a sync step runs in a helper thread that is
    abandoned at the deadline (it finishes in the background; its result is
    discarded). Put long CPU-bound work in its own process if it must stop.

    Abandoned threads are bounded: while :data:`MAX_ABANDONED_THREADS` (32)
    of them are still running in this process, a timed sync step is refused
    at once with :class:`TooManyAbandonedThreads` (a ``StepTimeout``) saying
    how many are running, instead of leaking one more thread per timeout
    (and per retry of a ``RetryPolicy``) until the process falls over.
    """

    kind = "timeout"

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        self.seconds = seconds

    @staticmethod
    def abandoned_threads() -> int:
        """How many threads of timed-out sync steps are still running in this process."""
        return _ABANDONED.running()

    def to_config(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def _timeout(self, step: Step) -> StepTimeout:
        return StepTimeout(f"step {current_name(step)!r} ran longer than {self.seconds:g} s")

    def execute(self, step: Step, call: Callable[[], Any]) -> Any:
        running = _ABANDONED.running()
        if running >= MAX_ABANDONED_THREADS:
            raise TooManyAbandonedThreads(current_name(step), running, MAX_ABANDONED_THREADS)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = call()
            except BaseException as exc:  # handed back to the calling thread
                outcome["error"] = exc
            finally:
                _ABANDONED.discard(thread)

        thread = threading.Thread(target=run, name=f"fuseline-{current_name(step)}", daemon=True)
        thread.start()
        thread.join(self.seconds)
        if thread.is_alive():
            _ABANDONED.add(thread)
            raise self._timeout(step)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    async def execute_async(self, step: Step, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await asyncio.wait_for(call(), self.seconds)
        except asyncio.TimeoutError:
            raise self._timeout(step) from None
