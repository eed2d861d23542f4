"""What runs a whole workflow in this process: the ``Runner`` protocol and its ``WorkflowRun``.

The workflow layer knows no engine. ``Workflow.run`` asks a runner: the one
passed in, the workflow's ``execution_engine``, or the process-wide default
that :mod:`fuseline.engines` registers when it is imported (``import
fuseline`` does that), so the arrows keep pointing one way: engines ->
workflow.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import FuselineError, WorkflowFailed
from ..states import Status

if TYPE_CHECKING:
    from .workflow import Workflow


@dataclass(frozen=True)
class WorkflowRun:
    """The outcome of one in-process run, as a broker would record its instance.

    - ``status``: the instance's final state (SUCCEEDED or FAILED).
    - ``result``: the output step's result (a list for several outputs).
    - ``error``: the instance's error text, None when it succeeded.
    - ``steps``: every step's final state in this run, by name: SKIPPED for
      targets of branches not taken and steps whose condition was false,
      CANCELLED downstream of a failure.
    - ``exception``: the first exception a step raised when the run failed,
      which ``Workflow.run`` re-raises.
    """

    status: Status
    result: Any
    error: str | None
    steps: dict[str, Status] = field(default_factory=dict)
    exception: BaseException | None = field(default=None, compare=False)

    @property
    def succeeded(self) -> bool:
        return self.status is Status.SUCCEEDED

    def result_or_raise(self) -> Any:
        """The result, or the step's exception (else :class:`~fuseline.errors.WorkflowFailed`)."""
        if self.status in (Status.FAILED, Status.CANCELLED):
            if self.exception is not None:
                raise self.exception
            raise WorkflowFailed(self.error or f"the workflow ended {self.status}")
        return self.result


@runtime_checkable
class Runner(Protocol):
    """Runs one instance of a workflow to its end in this process."""

    def run(self, workflow: Workflow, inputs: Mapping[str, Any]) -> WorkflowRun:
        """Run ``workflow`` on ``inputs``; a step's exception is reported in the run, not raised.

        A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
        ``SystemExit``) stops the run and propagates.
        """
        ...


class NoRunner(FuselineError):
    """``Workflow.run`` was called with no engine given and no default runner registered."""

    def __init__(self) -> None:
        super().__init__(
            "no runner to run the workflow in-process: import fuseline.engines (which registers "
            "PoolEngine as the default), pass engine=..., or call "
            "fuseline.workflow.set_default_runner(...)"
        )


_default_lock = threading.Lock()
_default: Runner | None = None


def set_default_runner(runner: Runner | None) -> Runner | None:
    """Make ``runner`` the one ``Workflow.run`` uses when given no engine; returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, runner
    return previous


def default_runner() -> Runner:
    """The registered default runner; raises :class:`NoRunner` when there is none."""
    runner = _default
    if runner is None:
        raise NoRunner()
    return runner
