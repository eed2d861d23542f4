"""``PoolEngine``: runs a whole workflow instance in this process on a thread pool.

Importing this module makes ``PoolEngine()`` the default runner of
``Workflow.run`` (``import fuseline`` imports it), so the workflow layer
never imports an engine.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..broker.base import StepAssignment
from ..broker.memory import MemoryBroker
from ..states import Status
from ..workflow.lifecycle import StepLifecycle
from ..workflow.runner import WorkflowRun, set_default_runner
from .assignment import run_assignment

if TYPE_CHECKING:
    from ..workflow.workflow import Workflow

#: Leases never expire in-process: no other worker could take the step over.
_IN_PROCESS_LEASE_SECONDS = 365 * 24 * 3600.0
#: Longest wait of an idle pool thread between looks at the queue (a report wakes it sooner).
_IDLE_POLL_SECONDS = 0.1


class PoolEngine:
    """Runs ``Workflow.run`` with up to ``workers`` steps at a time (the default :class:`Runner`).

    Each run's instance lives in a private :class:`MemoryBroker` (keeping
    Python objects, not JSON), so joins, branches, skips and cancellation
    follow exactly the rules every broker keeps, and the run's step states
    are the broker's. Steps run on ``workers`` pool threads, which suits
    steps that wait on I/O; the calling thread waits for them. A ``RetryPolicy``
    retries inside the pool thread (the private broker schedules none), and a
    ``Sleep`` holds no thread: the broker completes it when its time comes,
    which idle threads notice within ``_IDLE_POLL_SECONDS``.

    Everything a run keeps (its broker, its ``before_all``/``after_all``
    scope, its errors) belongs to that run, so one engine, like one
    workflow, can serve concurrent runs.

    A ``BaseException`` that is not an ``Exception`` stops the run: one
    raised by a step (``SystemExit``, ``KeyboardInterrupt``), or Ctrl-C in
    the waiting caller. The pool then claims nothing more, the steps in hand
    finish, the threads are joined, ``after_all`` runs, and the exception
    propagates to the caller of ``Workflow.run``.
    """

    def __init__(self, workers: int = 4) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers

    def run(self, workflow: Workflow, inputs: Mapping[str, Any]) -> WorkflowRun:
        """Run one instance to its end; a failed step is reported in the :class:`WorkflowRun`."""
        # RetryPolicy retries inside the pool thread, as in-process runs always did: not the broker.
        broker = MemoryBroker(store_json=False, lease_seconds=_IN_PROCESS_LEASE_SECONDS, broker_retries=False)
        schema = workflow.to_schema()
        instance_id = broker.dispatch_workflow(schema, dict(inputs))
        worker_id = broker.register_worker([schema, *(child.to_schema() for child in workflow.children)])
        with StepLifecycle() as lifecycle:
            pool = _InstancePool(workflow, broker, instance_id, worker_id, lifecycle)
            pool.run(self.workers)
        info = broker.get_instance(instance_id)
        failed = info.status is Status.FAILED
        return WorkflowRun(
            status=info.status,
            result=info.result,
            error=info.error,
            steps={step.name: step.state for step in info.steps},
            exception=pool.errors[0] if failed and pool.errors else None,
        )


class _InstancePool:
    """The threads of one run: each claims, runs and reports steps until the instance ends or a stop.

    Claims, reports and the "is it finished" check happen under one
    condition, so an idle thread is woken by every report and a stop request.
    """

    def __init__(
        self,
        workflow: Workflow,
        broker: MemoryBroker,
        instance_id: str,
        worker_id: str,
        lifecycle: StepLifecycle,
    ) -> None:
        self.workflow = workflow
        self.broker = broker
        self.instance_id = instance_id
        self.worker_id = worker_id
        self.lifecycle = lifecycle
        #: Exceptions of failed steps, in report order (the first is re-raised by Workflow.run).
        self.errors: list[Exception] = []
        #: The BaseException that stopped the pool, re-raised in the caller's thread.
        self.fatal: BaseException | None = None
        self._changed = threading.Condition()
        self._stopping = False

    def run(self, workers: int) -> None:
        """Run the instance on ``workers`` threads and wait for them; re-raise what stopped them."""
        threads: list[threading.Thread] = []
        try:
            for n in range(1, workers + 1):
                thread = threading.Thread(target=self._work, name=f"fuseline-pool-{n}", daemon=True)
                threads.append(thread)
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C (even while starting): start nothing new, finish the steps in hand
            self.stop()
            for thread in threads:
                if thread.ident is not None:  # not interrupted before it started
                    thread.join()
            raise
        if self.fatal is not None:
            raise self.fatal

    def _workflow_of(self, assignment: StepAssignment) -> Workflow:
        """The run's workflow, or the SubWorkflow child whose step this is."""
        key = (assignment.workflow_id, assignment.version)
        if key == self.workflow.key:
            return self.workflow
        return next(c for c in self.workflow.children if c.key == key)

    def stop(self) -> None:
        """Claim no more steps; threads return after the step in hand."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()

    def _work(self) -> None:
        try:
            while (assignment := self._next()) is not None:
                execution = run_assignment(self._workflow_of(assignment), assignment, self.lifecycle)
                with self._changed:
                    if execution.error is not None:
                        self.errors.append(execution.error)
                    self.broker.report_step(self.worker_id, execution.report)
                    self._changed.notify_all()
        except BaseException as exc:  # SystemExit, KeyboardInterrupt or a bug: stop; run() re-raises it
            with self._changed:
                if self.fatal is None:
                    self.fatal = exc
                self._stopping = True
                self._changed.notify_all()

    def _next(self) -> StepAssignment | None:
        """The next step to run, waiting while others run; None once finished or stopping."""
        with self._changed:
            while not self._stopping:
                assignment = self.broker.get_step(self.worker_id)
                if assignment is not None:
                    return assignment
                if self.broker.get_instance(self.instance_id).status is not Status.RUNNING:
                    return None
                self._changed.wait(_IDLE_POLL_SECONDS)
            return None


set_default_runner(PoolEngine())
