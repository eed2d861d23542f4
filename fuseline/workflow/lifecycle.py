"""``StepLifecycle``: pairs each step's ``before_all`` with one ``after_all`` in one scope.

A scope is one in-process run (``Workflow.run``), one worker (until it
closes), or the workflow's own default scope used by
``Workflow._execute_step`` (until ``Workflow.close()``). Keeping this in an
object per scope, rather than on the shared Workflow, is what lets two runs
of one workflow (or a run beside a worker) each get their own
``before_all`` and ``after_all``.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .coroutines import run_if_coroutine

if TYPE_CHECKING:
    from .step import Step


class StepLifecycle:
    """Which steps ran ``before_all`` in this scope, so ``close`` can call their ``after_all``.

    - :meth:`prepare` calls ``before_all`` the first time a step runs in the
      scope. Other threads running the same step wait until it returned; if
      it raised, the step is not prepared and the next run tries again.
    - :meth:`close` calls ``after_all`` once for every prepared step, in the
      order they were prepared, and starts a fresh scope (a second ``close``
      calls nothing). Every ``after_all`` runs even if one raises; the first
      error is raised afterwards.

    Async hooks are awaited. Usable as a context manager (``close`` on exit).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prepared: dict[Step, None] = {}  # insertion-ordered set
        self._preparing: dict[Step, threading.Lock] = {}

    def prepare(self, step: Step, shared: dict[Step, Any]) -> None:
        """Call ``step.before_all(shared)`` unless it already ran in this scope."""
        with self._lock:
            if step in self._prepared:
                return
            step_lock = self._preparing.setdefault(step, threading.Lock())
        with step_lock:
            with self._lock:
                if step in self._prepared:
                    return
            run_if_coroutine(step.before_all(shared))
            with self._lock:
                self._prepared[step] = None

    def close(self) -> None:
        """Call ``after_all`` on every step prepared in this scope, once."""
        with self._lock:
            prepared = list(self._prepared)
            self._prepared = {}
            self._preparing = {}
        first_error: Exception | None = None
        for step in prepared:
            try:
                run_if_coroutine(step.after_all({}))
            except Exception as exc:  # the other steps' after_all still run; raised below
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> StepLifecycle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
