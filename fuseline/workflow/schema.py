"""``WorkflowSchema``: the JSON description of a workflow that brokers store.

A broker never runs step code; it needs only the graph (steps, edges with
their actions, OR groups, which steps have conditions, outputs) and each
step's attempt limit. The schema carries that, plus the policies as config so
that tools can show them.

The ``hash`` covers what changes how a broker drives an instance (the graph
and attempt limits) and nothing else, so a changed graph under the same
``(workflow_id, version)`` is caught while a tweak to a retry policy is not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import WorkflowDefinitionError

SCHEMA_FORMAT = 1
#: Policies a broker acts on (it schedules retries and enforces limits), so part of the hash.
SCHEDULING_POLICIES = frozenset({"retry", "concurrency_limit", "rate_limit"})
MAX_NAME_LENGTH = 200


def canonical_json(value: Any) -> str:
    """Stable JSON text: sorted keys, no spaces, ASCII only (so bytes match everywhere)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def check_name(kind: str, value: Any, max_length: int = MAX_NAME_LENGTH) -> str:
    """Validate an identifier a user chose (step name, workflow id, version).

    Any printable text is kept verbatim (quotes and SQL keywords included:
    every query is parameterised); control characters such as NUL, which
    PostgreSQL cannot store in text, are refused with a clear message.
    """
    problem = name_problem(kind, value, max_length)
    if problem is not None:
        raise WorkflowDefinitionError(problem)
    return value


def name_problem(kind: str, value: Any, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """What is wrong with a name a user chose (see :func:`check_name`), or None; callers raise
    the error of their own layer with it (an instance key is checked the same way)."""
    if not isinstance(value, str) or not value:
        return f"{kind} must be a non-empty string, got {value!r}"
    if len(value) > max_length:
        return f"{kind} is {len(value)} characters long; the limit is {max_length}"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return f"{kind} {value!r} contains control characters"
    return None


@dataclass(frozen=True)
class WorkflowSchema:
    """A workflow definition as data.

    ``steps`` lists every step in a topological order (dependencies first) as
    dicts with ``name``, ``kind``, ``type``, ``max_attempts``, ``inputs`` (the
    workflow inputs it reads), ``dependencies`` (parameter -> step names) and
    ``policies``. ``edges`` are ``{source, target, action}`` (``action`` None
    for ``>>``); ``or_groups`` are ``{step, param, members}``; ``conditions``
    are ``{step, param, description}``.
    """

    workflow_id: str
    version: str
    steps: tuple[dict[str, Any], ...]
    edges: tuple[dict[str, Any], ...]
    or_groups: tuple[dict[str, Any], ...]
    conditions: tuple[dict[str, Any], ...]
    outputs: tuple[str, ...]
    policies: tuple[dict[str, Any], ...] = ()
    hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_name("workflow_id", self.workflow_id)
        check_name("version", self.version, 100)
        self._validate()
        object.__setattr__(self, "hash", self.compute_hash())

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCHEMA_FORMAT,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "steps": [dict(s) for s in self.steps],
            "edges": [dict(e) for e in self.edges],
            "or_groups": [dict(g) for g in self.or_groups],
            "conditions": [dict(c) for c in self.conditions],
            "outputs": list(self.outputs),
            "policies": [dict(p) for p in self.policies],
            "hash": self.hash,
        }

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowSchema:
        if not isinstance(data, dict):
            raise WorkflowDefinitionError("a workflow schema must be a JSON object")
        if data.get("format", SCHEMA_FORMAT) != SCHEMA_FORMAT:
            raise WorkflowDefinitionError(f"unsupported workflow schema format {data.get('format')!r}")
        try:
            schema = cls(
                workflow_id=data["workflow_id"],
                version=str(data["version"]),
                steps=tuple(dict(s) for s in data["steps"]),
                edges=tuple(dict(e) for e in data.get("edges", ())),
                or_groups=tuple(dict(g) for g in data.get("or_groups", ())),
                conditions=tuple(dict(c) for c in data.get("conditions", ())),
                outputs=tuple(data["outputs"]),
                policies=tuple(dict(p) for p in data.get("policies", ())),
            )
        except (KeyError, TypeError) as exc:
            raise WorkflowDefinitionError(f"malformed workflow schema: {exc}") from None
        stated = data.get("hash")
        if stated and stated != schema.hash:
            raise WorkflowDefinitionError(
                f"workflow schema {schema.workflow_id!r} states hash {stated!r} but its content "
                f"hashes to {schema.hash!r}"
            )
        return schema

    @classmethod
    def from_json(cls, text: str) -> WorkflowSchema:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise WorkflowDefinitionError(f"workflow schema is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    # -- content --------------------------------------------------------------------------
    def graph(self) -> dict[str, Any]:
        """The part of the schema a broker acts on; what ``hash`` covers.

        Scheduling (a step's queue, a pause, retries and limits the broker
        applies) is part of it only where a step or the workflow has some, so
        a workflow without any hashes as it always did.
        """
        graph: dict[str, Any] = {
            "steps": [self._step_graph(s) for s in self.steps],
            "edges": sorted(
                ([e["source"], e["target"], e.get("action")] for e in self.edges),
                key=lambda e: (e[0], e[1], e[2] is not None, e[2] or ""),
            ),
            "or_groups": sorted(
                ([g["step"], g.get("param"), list(g["members"])] for g in self.or_groups),
                key=lambda g: (g[0], g[1] or ""),
            ),
            "conditions": sorted([c["step"], c.get("param")] for c in self.conditions),
            "outputs": list(self.outputs),
        }
        scheduling = [p for p in self.policies if p.get("type") in SCHEDULING_POLICIES]
        if scheduling:
            graph["scheduling"] = scheduling
        return graph

    @staticmethod
    def _step_graph(spec: dict[str, Any]) -> dict[str, Any]:
        step = {
            "name": spec["name"],
            "max_attempts": spec.get("max_attempts", 3),
            "dependencies": spec.get("dependencies", {}),
        }
        scheduling: dict[str, Any] = {
            key: spec[key]
            for key in ("queue", "sleep_seconds", "map", "wait_for", "subworkflow")
            if spec.get(key) is not None
        }
        policies = [p for p in spec.get("policies", ()) if p.get("type") in SCHEDULING_POLICIES]
        if policies:
            scheduling["policies"] = policies
        if scheduling:
            step["scheduling"] = scheduling
        return step

    def compute_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.graph()).encode()).hexdigest()

    @property
    def key(self) -> tuple[str, str]:
        return (self.workflow_id, self.version)

    @property
    def step_names(self) -> list[str]:
        return [s["name"] for s in self.steps]

    def _validate(self) -> None:
        names: set[str] = set()
        for step in self.steps:
            name = check_name("step name", step.get("name"))
            if name in names:
                raise WorkflowDefinitionError(f"step name {name!r} is used twice")
            names.add(name)
            attempts = step.get("max_attempts", 3)
            if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
                raise WorkflowDefinitionError(f"step {name!r}: max_attempts must be an integer >= 1")
        for edge in self.edges:
            for end in ("source", "target"):
                if edge.get(end) not in names:
                    raise WorkflowDefinitionError(f"edge {edge!r} names an unknown step")
            action = edge.get("action")
            if action is not None and not isinstance(action, str):
                raise WorkflowDefinitionError(f"edge {edge!r}: action must be a string or null")
        for group in self.or_groups:
            members = group.get("members") or []
            if group.get("step") not in names or not members or any(m not in names for m in members):
                raise WorkflowDefinitionError(f"OR group {group!r} names an unknown step")
        if not self.outputs:
            raise WorkflowDefinitionError("a workflow needs at least one output step")
        for output in self.outputs:
            if output not in names:
                raise WorkflowDefinitionError(f"output {output!r} is not a step of the workflow")
