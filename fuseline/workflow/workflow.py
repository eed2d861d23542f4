"""``Workflow``: a DAG of steps with stable names, a schema, and ways to run it."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WorkflowDefinitionError
from ..policies import Policy, StepPolicy, WorkflowPolicy
from ..states import Status
from .execution import Outcome, run_step
from .schema import WorkflowSchema, canonical_json, check_name
from .step import FunctionStep, Step

if TYPE_CHECKING:
    from ..broker.base import Broker
    from ..engines.pool import PoolEngine


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
    """

    def __init__(
        self,
        outputs: Step | Callable[..., Any] | Sequence[Step | Callable[..., Any]],
        *,
        workflow_id: str | None = None,
        version: str | int = "1",
        policies: Sequence[Policy] | None = None,
        execution_engine: PoolEngine | None = None,
    ) -> None:
        items = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        if not items:
            raise WorkflowDefinitionError("a workflow needs at least one output step")
        self.outputs: list[Step] = [o if isinstance(o, Step) else FunctionStep.for_function(o) for o in items]
        self.version = check_name("version", str(version), 100)
        self.policies: list[Policy] = list(policies or [])
        self.execution_engine = execution_engine
        #: Workflow inputs of the step being run (the seed's custom workers update it).
        self.params: dict[str, Any] = {}
        self._order = _topological_order(self.outputs)
        self._names = _assign_names(self._order)
        self._steps = {name: step for step, name in self._names.items()}
        for step, name in self._names.items():
            if step.name is None:
                step.name = name
        self._prepared: set[Step] = set()
        self._prepared_lock = threading.Lock()
        graph_schema = self._build_schema("_", self.version)
        self.workflow_id = (
            check_name("workflow_id", workflow_id)
            if workflow_id is not None
            else self._default_id(graph_schema)
        )
        self._schema = self._build_schema(self.workflow_id, self.version)

    # -- structure --------------------------------------------------------------------
    @property
    def steps(self) -> dict[str, Step]:
        """Step name -> Step, in topological order (a copy)."""
        return dict(self._steps)

    @property
    def steps_by_name(self) -> Mapping[str, Step]:
        """Step name -> Step without copying, for engines on the hot path."""
        return self._steps

    def name_of(self, step: Step) -> str:
        try:
            return self._names[step]
        except KeyError:
            raise KeyError(f"{step!r} is not a step of workflow {self.workflow_id!r}") from None

    def to_schema(self) -> WorkflowSchema:
        return self._schema

    def _build_schema(self, workflow_id: str, version: str) -> WorkflowSchema:
        steps, edges, or_groups, conditions = [], [], [], []
        for step in self._order:
            name = self._names[step]
            dependencies: dict[str, list[str]] = {}
            for param in step.parameters:
                if param.dependency is None:
                    continue
                members = [self._names[t] for t in param.dependency.resolve()]
                dependencies[param.name] = members
                if param.dependency.any_of:
                    or_groups.append({"step": name, "param": param.name, "members": members})
                if param.dependency.condition is not None:
                    conditions.append(
                        {
                            "step": name,
                            "param": param.name,
                            "description": param.dependency.condition.description,
                        }
                    )
            steps.append(
                {
                    "name": name,
                    "kind": step.kind,
                    "type": step.type_name,
                    "max_attempts": step.max_attempts,
                    "inputs": [p.name for p in step.parameters if p.is_input],
                    "dependencies": dependencies,
                    "policies": [p.describe() for p in step.policies],
                }
            )
            for predecessor in step.predecessors:
                actions = step.edge_actions(predecessor)
                for action in sorted(actions, key=lambda a: (a is not None, a or "")):
                    edges.append({"source": self._names[predecessor], "target": name, "action": action})
        return WorkflowSchema(
            workflow_id=workflow_id,
            version=version,
            steps=tuple(steps),
            edges=tuple(edges),
            or_groups=tuple(or_groups),
            conditions=tuple(conditions),
            outputs=tuple(self._names[o] for o in self.outputs),
            policies=tuple(p.describe() for p in self.policies),
        )

    def _default_id(self, schema: WorkflowSchema) -> str:
        identity = {
            "graph": schema.hash,
            "types": [f"{_module_name(s)}:{s.type_name}" for s in self._order],
        }
        digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:10]
        return f"{self._names[self.outputs[0]]}-{digest}"

    # -- running ------------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any] | None = None, *, engine: PoolEngine | None = None) -> Any:
        """Run the whole workflow in this process and return the output's result.

        Steps whose dependencies are met run concurrently on a thread pool
        (``PoolEngine``). Results pass between steps as Python objects. With
        several outputs the result is a list. If a step fails, its exception
        is raised here.
        """
        from ..engines.pool import PoolEngine

        runner = engine or self.execution_engine or PoolEngine()
        hooks = [p for p in self.policies if isinstance(p, WorkflowPolicy)]
        for hook in hooks:
            hook.on_workflow_start(self)
        try:
            result = runner.run(self, dict(inputs or {}))
        except Exception:
            for hook in hooks:
                hook.on_workflow_finished(self, Status.FAILED.value, None)
            raise
        for hook in hooks:
            hook.on_workflow_finished(self, Status.SUCCEEDED.value, result)
        return result

    def dispatch(self, broker: Broker, inputs: Mapping[str, Any] | None = None) -> str:
        """Start an instance on ``broker``; returns its id. Workers do the rest."""
        return broker.dispatch_workflow(self.to_schema(), dict(inputs or {}))

    def _execute_step(
        self, step: Step, shared: Mapping[Step, Any], inputs: Mapping[str, Any] | None = None
    ) -> Any:
        """Run one step with every workflow and step policy; set ``step.state``.

        ``shared`` maps predecessor Steps to their results; ``inputs`` defaults
        to ``self.params``. Returns the result (None when a condition skipped
        the step, which leaves ``step.state`` SKIPPED) or raises what the step
        raised (``step.state`` FAILED).
        """
        outcome = self._run(step, shared, self.params if inputs is None else inputs)
        return outcome.result

    def _run(self, step: Step, shared: Mapping[Step, Any], inputs: Mapping[str, Any]) -> Outcome:
        """``_execute_step`` returning the whole :class:`Outcome` (engines need ``skipped``)."""
        hooks = [p for p in self.policies if isinstance(p, WorkflowPolicy)]
        step_policies = [p for p in (*self.policies, *step.policies) if isinstance(p, StepPolicy)]
        for hook in hooks:
            hook.on_step_start(self, step)
        step.state = Status.RUNNING
        try:
            outcome = run_step(step, shared, inputs, step_policies, self._before_first_run)
        except Exception as exc:
            step.state = Status.FAILED
            for hook in hooks:
                hook.on_step_failure(self, step, exc)
            raise
        step.state = Status.SKIPPED if outcome.skipped else Status.SUCCEEDED
        if not outcome.skipped:
            for hook in hooks:
                hook.on_step_success(self, step, outcome.result)
        return outcome

    def _before_first_run(self, step: Step, shared: dict[Step, Any]) -> None:
        with self._prepared_lock:
            first = step not in self._prepared
            self._prepared.add(step)
        if first:
            step.before_all(shared)

    def close(self) -> None:
        """Call ``after_all`` on every step that ran in this process (once)."""
        with self._prepared_lock:
            prepared, self._prepared = self._prepared, set()
        for step in self._order:
            if step in prepared:
                step.after_all({})

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


def _topological_order(outputs: Sequence[Step]) -> list[Step]:
    """The outputs and all their ancestors, dependencies first, in declaration order."""
    order: list[Step] = []
    done: set[Step] = set()
    on_path: list[Step] = []

    def visit(step: Step) -> None:
        if step in done:
            return
        if step in on_path:
            # on_path runs from successors to predecessors: reverse it to follow the edges
            cycle = [step, *reversed(on_path[on_path.index(step) :])]
            raise WorkflowDefinitionError(
                "the workflow has a cycle: " + " >> ".join(_label(s) for s in cycle)
            )
        on_path.append(step)
        for predecessor in step.predecessors:
            visit(predecessor)
        on_path.pop()
        done.add(step)
        order.append(step)

    for output in outputs:
        visit(output)
    return order


def _label(step: Step) -> str:
    return step.name or step.default_name


def _assign_names(order: Sequence[Step]) -> dict[Step, str]:
    names: dict[Step, str] = {}
    taken: set[str] = set()
    for step in order:
        if step.explicit_name is not None:
            name = check_name("step name", step.explicit_name)
            if name in taken:
                raise WorkflowDefinitionError(f"two steps are named {name!r}; names must be unique")
            taken.add(name)
            names[step] = name
    for step in order:
        if step in names:
            continue
        base = step.default_name
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        names[step] = name
    return {step: names[step] for step in order}


def _module_name(step: Step) -> str:
    """The module defining the step, with ``__main__`` read as the script's own name."""
    owner = step.fn if isinstance(step, FunctionStep) else type(step)
    module = getattr(owner, "__module__", None) or ""
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            return spec.name
        path = getattr(main, "__file__", None)
        return Path(path).stem if path else module
    return module
