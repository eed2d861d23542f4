"""The shape of a workflow: its steps in order, their per-workflow names, its schema, its id.

Pure functions over Step objects, used once when a ``Workflow`` is built.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import WorkflowDefinitionError
from .policies import Policy
from .schema import WorkflowSchema, canonical_json, check_name
from .step import FunctionStep, Step


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
