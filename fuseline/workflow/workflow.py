"""``Workflow``: a DAG of steps with stable names, a schema, and ways to run it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from ..errors import WorkflowDefinitionError
from ..states import Status
from .execution import Outcome, invoke_step
from .graph import assign_names, build_schema, check_scheduling, default_workflow_id, topological_order
from .lifecycle import StepLifecycle
from .policies import Policy, RetryPolicy, StepPolicy, WorkflowPolicy
from .runner import Runner, WorkflowRun, default_runner
from .schema import WorkflowSchema, check_name
from .shapes import Map, SubWorkflow, contains_workflow
from .step import FunctionStep, Step, running_as


class InstanceDispatcher(Protocol):
    """What :meth:`Workflow.dispatch` needs of a broker; every ``fuseline.broker.Broker`` is one.

    Named here so that the workflow layer does not import the broker layer.
    """

    def dispatch_workflow(
        self,
        schema: WorkflowSchema,
        inputs: Mapping[str, Any],
        *,
        delay: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        priority: int = 0,
    ) -> str: ...


class _PendingInputs(threading.local):
    """Per thread: the workflow inputs that the next ``_execute_step`` call in that thread uses."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}


class Workflow:
    """A DAG of steps, identified by ``(workflow_id, version)``.

    The workflow holds ``outputs`` and every step they depend on, directly or
    through others. Its graph is read when the Workflow is created.

    - ``workflow_id`` defaults to the first output's name plus a digest of the
      graph and the step classes, identical in every process that imports the
      same module. Set it explicitly in production so that it stays the same
      when the workflow changes (and bump ``version`` instead).
    - Step names are the explicit ``name=`` of a step, else its class or
      function name in snake_case; repeats get ``_2``, ``_3``, ... in graph order.
      They belong to this workflow (``steps``, ``name_of``) and are never
      written onto the Step objects, which other workflows may share.

    ``run`` / ``run_instance`` keep each run's state (step states,
    ``before_all``/``after_all``) in the run, never on the Workflow or its
    Steps, so one workflow may be run from several threads at once.
    """

    def __init__(
        self,
        outputs: Step | Callable[..., Any] | Sequence[Step | Callable[..., Any]],
        *,
        workflow_id: str | None = None,
        version: str | int = "1",
        policies: Sequence[Policy] | None = None,
        execution_engine: Runner | None = None,
    ) -> None:
        items = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        if not items:
            raise WorkflowDefinitionError("a workflow needs at least one output step")
        self.outputs: list[Step] = [o if isinstance(o, Step) else FunctionStep.for_function(o) for o in items]
        self.version = check_name("version", str(version), 100)
        self.policies: list[Policy] = list(policies or [])
        #: The runner ``run`` uses when it is given none (else the registered default).
        self.execution_engine = execution_engine
        self._pending = _PendingInputs()
        #: The scope of before_all/after_all for ``_execute_step`` and engines that bring none.
        self._lifecycle = StepLifecycle()
        self._order = topological_order(self.outputs)
        self._names = assign_names(self._order)
        self._steps = {name: step for step, name in self._names.items()}
        check_scheduling(self._order, self._names, self.policies)
        graph = build_schema(self._order, self._names, self.outputs, self.policies, "_", self.version)
        self.workflow_id = (
            check_name("workflow_id", workflow_id)
            if workflow_id is not None
            else default_workflow_id(self._order, graph)
        )
        for step in self._order:
            if contains_workflow(step, self.workflow_id):
                raise WorkflowDefinitionError(
                    f"workflow {self.workflow_id!r} contains itself through SubWorkflow "
                    f"{self._names[step]!r}: a workflow cannot run itself"
                )
        self._schema = build_schema(
            self._order, self._names, self.outputs, self.policies, self.workflow_id, self.version
        )

    # -- structure --------------------------------------------------------------------
    @property
    def children(self) -> list[Workflow]:
        """The workflows its SubWorkflow steps run, and theirs, each once: a worker of this
        workflow runs their steps too."""
        found: dict[tuple[str, str], Workflow] = {}
        for step in self._order:
            if isinstance(step, SubWorkflow):
                for child in (step.child, *step.child.children):
                    found.setdefault(child.key, child)
        return list(found.values())

    @property
    def key(self) -> tuple[str, str]:
        return (self.workflow_id, self.version)

    @property
    def steps(self) -> dict[str, Step]:
        """Step name -> Step, in topological order (a copy)."""
        return dict(self._steps)

    @property
    def steps_by_name(self) -> Mapping[str, Step]:
        """Step name -> Step without copying, for engines on the hot path."""
        return self._steps

    def knows(self, name: str) -> bool:
        """Whether a broker's assignment of ``name`` (a step, or a Map item) is this workflow's."""
        try:
            self.step_for(name)
        except KeyError:
            return False
        return True

    def step_for(self, name: str) -> Step:
        """The step a broker's assignment names: a step's name, or a Map item's ``name[i]``
        (its Map, which runs the mapped step with the item)."""
        found = self._steps.get(name)
        if found is None and name.endswith("]") and name[name.rfind("[") + 1 : -1].isdigit():
            owner = self._steps.get(name[: name.rfind("[")])
            found = owner if isinstance(owner, Map) else None
        if found is None:
            raise KeyError(f"workflow {self.workflow_id!r} has no step {name!r}")
        return found

    def name_of(self, step: Step) -> str:
        """The name of ``step`` in this workflow (it may differ in another workflow)."""
        try:
            return self._names[step]
        except KeyError:
            raise KeyError(f"{step!r} is not a step of workflow {self.workflow_id!r}") from None

    def to_schema(self) -> WorkflowSchema:
        return self._schema

    # -- inputs of hand-written workers -----------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """The workflow inputs of the next ``_execute_step`` call in this thread.

        The worker guide's loop fills it for each assignment
        (``workflow.params.update(assignment.payload["workflow_inputs"])``)
        and then calls ``workflow._execute_step(step, shared)``. Inputs belong
        to one instance, so each ``_execute_step`` call consumes them: the
        next call starts from ``{}``, and an instance that lacks an input
        fails with ``MissingInput`` instead of silently reading an earlier
        instance's value. ``params`` is per thread, so threads running steps
        of different instances do not see each other's inputs. Assigning
        (``workflow.params = {...}``) works too.
        """
        return self._pending.params

    @params.setter
    def params(self, value: Mapping[str, Any]) -> None:
        self._pending.params = value if isinstance(value, dict) else dict(value)

    def _take_params(self) -> dict[str, Any]:
        params = self._pending.params
        self._pending.params = {}
        return params

    # -- running a whole workflow in this process ----------------------------------------
    def run(self, inputs: Mapping[str, Any] | None = None, *, engine: Runner | None = None) -> Any:
        """Run the whole workflow in this process and return the output's result.

        Steps whose dependencies are met run concurrently on a thread pool
        (``PoolEngine``, unless ``engine`` or ``execution_engine`` says
        otherwise). Results pass between steps as Python objects. With
        several outputs the result is a list. If a step fails, its exception
        is raised here (:class:`~fuseline.errors.WorkflowFailed` when there is
        none to raise). Use :meth:`run_instance` to see every step's state.
        """
        return self.run_instance(inputs, engine=engine).result_or_raise()

    def run_instance(
        self, inputs: Mapping[str, Any] | None = None, *, engine: Runner | None = None
    ) -> WorkflowRun:
        """Run the whole workflow like :meth:`run`, but return the :class:`WorkflowRun`.

        A FAILED run is returned, not raised: its ``steps`` show each step's
        final state in this run (SKIPPED, CANCELLED, ...), as a broker would
        record them. ``WorkflowPolicy.on_workflow_start`` and
        ``on_workflow_finished`` run around it.
        """
        runner = engine or self.execution_engine or default_runner()
        hooks = [p for p in self.policies if isinstance(p, WorkflowPolicy)]
        for hook in hooks:
            hook.on_workflow_start(self)
        try:
            run = runner.run(self, dict(inputs or {}))
        except BaseException:
            for hook in hooks:
                hook.on_workflow_finished(self, Status.FAILED.value, None)
            raise
        result = run.result if run.succeeded else None
        for hook in hooks:
            hook.on_workflow_finished(self, run.status.value, result)
        return run

    def dispatch(
        self,
        broker: InstanceDispatcher,
        inputs: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        priority: int = 0,
    ) -> str:
        """Start an instance on ``broker`` (a ``fuseline.broker.Broker``); returns its id.

        Workers do the rest. ``delay`` (seconds) or ``at`` (a timezone-aware
        datetime): its first steps become claimable then. ``key``: at most one
        instance per key of this workflow; dispatching the key again returns
        the existing id when the inputs are equal, and raises KeyConflict
        when they differ. ``priority``: higher first among claimable steps,
        inherited by every step of the instance.
        """
        return broker.dispatch_workflow(
            self.to_schema(), dict(inputs or {}), delay=delay, at=at, key=key, priority=priority
        )

    # -- executing one step -------------------------------------------------------------
    def execute_step(
        self,
        step: Step,
        shared: Mapping[Step, Any],
        inputs: Mapping[str, Any],
        *,
        lifecycle: StepLifecycle | None = None,
        policy_retries: bool = True,
    ) -> Outcome:
        """Execute one step once, applying every ``WorkflowPolicy`` and ``StepPolicy``.

        ``shared`` maps predecessor Steps to their results and ``inputs`` are
        the instance's inputs. ``lifecycle`` is the scope of ``before_all`` /
        ``after_all`` (a run's or a worker's); by default the workflow's own,
        which :meth:`close` ends. ``policy_retries=False`` leaves ``RetryPolicy``
        out: a broker's worker reports the first failure and the broker
        schedules the retry, durably, instead of this thread sleeping on it.
        Returns the :class:`Outcome` (``skipped`` when a condition was false)
        or raises what the step raised. Writes no state: the caller (an
        engine, ``_execute_step``) records it.
        """
        hooks = [p for p in self.policies if isinstance(p, WorkflowPolicy)]
        step_policies = [
            p
            for p in (*self.policies, *step.policies)
            if isinstance(p, StepPolicy) and (policy_retries or not isinstance(p, RetryPolicy))
        ]
        name = self._names.get(step) or step.label
        with running_as(step, name):
            for hook in hooks:
                hook.on_step_start(self, step)
            try:
                outcome = invoke_step(step, shared, inputs, step_policies, lifecycle or self._lifecycle, name)
            except Exception as exc:
                for hook in hooks:
                    hook.on_step_failure(self, step, exc)
                raise
            if not outcome.skipped:
                for hook in hooks:
                    hook.on_step_success(self, step, outcome.result)
        return outcome

    def _execute_step(
        self, step: Step, shared: Mapping[Step, Any], inputs: Mapping[str, Any] | None = None
    ) -> Any:
        """Run one step with every workflow and step policy; set ``step.state``.

        The worker guide's contract for hand-written workers. ``shared`` maps
        predecessor Steps to their results; ``inputs`` defaults to
        :attr:`params`, which this call consumes (see there). Returns the
        result (None when a condition skipped the step, which leaves
        ``step.state`` SKIPPED) or raises what the step raised (``step.state``
        FAILED). ``before_all`` runs once until :meth:`close`.
        """
        params = self._take_params()
        step.state = Status.RUNNING
        try:
            outcome = self.execute_step(step, shared, params if inputs is None else inputs)
        except Exception:
            step.state = Status.FAILED
            raise
        step.state = Status.SKIPPED if outcome.skipped else Status.SUCCEEDED
        return outcome.result

    def close(self) -> None:
        """Call ``after_all`` on every step that ``_execute_step`` (or an engine using the
        workflow's own lifecycle) prepared since the last close; once."""
        self._lifecycle.close()

    def __repr__(self) -> str:
        return f"<Workflow {self.workflow_id!r} v{self.version} steps={list(self._steps)}>"


def workflow_from_functions(
    outputs: Callable[..., Any] | Step | Sequence[Callable[..., Any] | Step],
    *,
    workflow_id: str | None = None,
    version: str | int = "1",
    policies: Sequence[Policy] | None = None,
) -> Workflow:
    """Build a workflow from plain functions linked by ``Depends(other_function)``."""
    return Workflow(outputs, workflow_id=workflow_id, version=version, policies=policies)
