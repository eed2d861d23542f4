"""The shape of a workflow: its steps in order, their per-workflow names, its schema, its id.

Pure functions over Step objects, used once when a ``Workflow`` is built.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import WorkflowDefinitionError
from .policies import Policy
from .scheduling import RateLimit, SchedulingPolicy
from .schema import WorkflowSchema, canonical_json, check_name
from .shapes import ITEM_PARAMETER, Map, ShapeStep, SubWorkflow
from .step import DEFAULT_QUEUE, FunctionStep, Sleep, Step


def topological_order(outputs: Sequence[Step]) -> list[Step]:
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
            raise WorkflowDefinitionError("the workflow has a cycle: " + " >> ".join(s.label for s in cycle))
        on_path.append(step)
        for predecessor in step.predecessors:
            visit(predecessor)
        on_path.pop()
        done.add(step)
        order.append(step)

    for output in outputs:
        visit(output)
    return order


def assign_names(order: Sequence[Step]) -> dict[Step, str]:
    """Each step's name in this workflow: its chosen name, else its label de-duplicated in order.

    Chosen names are placed first, so a generated ``add`` moves aside
    (``add_2``) for a step explicitly named ``add``. Nothing is written onto
    the steps: the same step may carry another name in another workflow.
    """
    names: dict[Step, str] = {}
    taken: set[str] = set()
    for step in order:
        if step.name is not None:
            name = check_name("step name", step.name)
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


def build_schema(
    order: Sequence[Step],
    names: Mapping[Step, str],
    outputs: Sequence[Step],
    policies: Sequence[Policy],
    workflow_id: str,
    version: str,
) -> WorkflowSchema:
    """The :class:`WorkflowSchema` of the graph: what a broker stores and acts on."""
    steps, edges, or_groups, conditions = [], [], [], []
    for step in order:
        name = names[step]
        dependencies: dict[str, list[str]] = {}
        for param in step.parameters:
            if param.dependency is None:
                continue
            members = [names[t] for t in param.dependency.resolve()]
            dependencies[param.name] = members
            if param.dependency.any_of:
                or_groups.append({"step": name, "param": param.name, "members": members})
            if param.dependency.condition is not None:
                conditions.append(
                    {"step": name, "param": param.name, "description": param.dependency.condition.description}
                )
        spec: dict[str, Any] = {
            "name": name,
            "kind": step.kind,
            "type": step.type_name,
            "max_attempts": step.max_attempts,
            "inputs": [
                p.name
                for p in step.parameters
                if p.is_input and not (isinstance(step, Map) and p.name == ITEM_PARAMETER)
            ],
            "dependencies": dependencies,
            "policies": [p.describe() for p in step.policies],
        }
        # Written only when set, so the schemas (and ids) of workflows that use neither keep their hash.
        if step.queue != DEFAULT_QUEUE:
            spec["queue"] = step.queue
        if isinstance(step, Sleep):
            spec["sleep_seconds"] = step.seconds
        if isinstance(step, (Map, ShapeStep)):
            spec.update(step.describe_shape(names))
        if isinstance(step, SubWorkflow):
            dependencies.update(step.consumed(names))
        steps.append(spec)
        for predecessor in step.predecessors:
            actions = step.edge_actions(predecessor)
            for action in sorted(actions, key=lambda a: (a is not None, a or "")):
                edges.append({"source": names[predecessor], "target": name, "action": action})
    return WorkflowSchema(
        workflow_id=workflow_id,
        version=version,
        steps=tuple(steps),
        edges=tuple(edges),
        or_groups=tuple(or_groups),
        conditions=tuple(conditions),
        outputs=tuple(names[o] for o in outputs),
        policies=tuple(p.describe() for p in policies),
    )


def check_scheduling(order: Sequence[Step], names: Mapping[Step, str], policies: Sequence[Policy]) -> None:
    """Refuse limits the broker could not apply: a key that names no workflow input, a rate
    limit on the whole workflow (it limits a step's starts)."""
    inputs = {p.name for step in order for p in step.parameters if p.is_input}
    placed = [(None, p) for p in policies] + [(names[s], p) for s in order for p in s.policies]
    for step_name, policy in placed:
        if not isinstance(policy, SchedulingPolicy):
            continue
        where = f"step {step_name!r}" if step_name else "the workflow"
        if step_name is None and isinstance(policy, RateLimit):
            raise WorkflowDefinitionError(
                f"{policy!r} on the workflow: a RateLimit limits the starts of a step"
            )
        if policy.key is not None and policy.key not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise WorkflowDefinitionError(
                f"{policy!r} on {where}: key {policy.key!r} is not an input of the workflow "
                f"(its inputs: {known})"
            )


def default_workflow_id(order: Sequence[Step], graph: WorkflowSchema) -> str:
    """The first output's name plus a digest of the graph and the step types.

    Identical in every process that imports the same module (never random).
    """
    identity = {
        "graph": graph.hash,
        "types": [f"{_module_name(s)}:{s.type_name}" for s in order],
    }
    digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:10]
    return f"{graph.outputs[0]}-{digest}"


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
