"""How an instance moves forward: the join, branch, skip and cancel rules, in one place.

Brokers keep step states; this module decides, from those states alone,
which PENDING steps become QUEUED, SKIPPED or CANCELLED after something
changed. Every broker calls it while holding its per-instance lock, so two
predecessors finishing at once are evaluated one after the other and a
successor is queued exactly once.

The rules (README, "What the broker guarantees"):

- a step's dependencies are *slots*: each predecessor on its own, except
  that the members of an OR group (``Depends([a, b])``) form one slot;
- an edge ``p -> s`` is *taken* when ``p`` SUCCEEDED and, if ``p`` branches,
  its result named the edge's action (default edges are taken when the
  result names no action);
- a slot is *satisfied* by a taken edge (for an OR group, by the member
  that succeeded first); once its members are all final without that, it is
  *failed* if one ended FAILED/CANCELLED, *vetoed* if one succeeded down
  another branch, and *skipped* if they were SKIPPED; before that it is
  *pending*;
- a step with a failed slot is CANCELLED (fail-fast downstream); with a
  vetoed slot it is SKIPPED (the target of a branch not taken); with every
  slot satisfied or skipped and at least one satisfied it is QUEUED (a
  skipped dependency gives None); with every slot skipped it is SKIPPED
  (skips propagate); otherwise it waits. Roots are QUEUED at once.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import WorkflowDefinitionError
from ..states import BROKEN_STATES, UNFINISHED_STATES, Status
from ..workflow.schema import WorkflowSchema
from .scheduling import scheduling_of


@dataclass(frozen=True)
class StepNode:
    name: str
    max_attempts: int
    #: Each slot is a tuple of predecessor names; more than one = an OR group.
    slots: tuple[tuple[str, ...], ...]
    successors: tuple[str, ...]
    #: Actions named on this step's outgoing edges: a result naming one is a branch choice.
    actions: frozenset[str]
    #: predecessor -> the actions of its edge(s) into this step (None = default edge).
    inbound: Mapping[str, frozenset[str | None]]
    #: Predecessors whose results this step receives (those named by a Depends).
    consumes: frozenset[str]


@dataclass
class StepView:
    """The facts about one step that the rules read."""

    state: Status
    #: The branch action its result chose (None: default edges).
    action: str | None = None
    #: Sort key of when it finished (only compared among SUCCEEDED steps).
    finished: Any = None


@dataclass
class Progress:
    """What ``settle`` decided; the caller writes it down."""

    #: step -> names of the predecessors whose results it receives.
    queued: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FastReport:
    """What a step's success does when no other step's state matters.

    Precomputed per step so a broker can record a success in one statement:
    either its successors (each depending on this step alone) are queued, or
    the instance ends SUCCEEDED with this step's result. Steps that branch,
    feed a join, or may not be the last to finish have no fast report.
    """

    #: Successors to queue (PENDING -> QUEUED).
    queue: tuple[str, ...] = ()
    #: Those of them that receive this step's result.
    consumers: tuple[str, ...] = ()
    #: Whether this success finishes the instance (result: this step's result).
    finalizes: bool = False
    #: What its consumers record as the predecessors they take results from: this step alone
    #: (JSON, computed once here rather than per report).
    consumed_as: str = field(default="", compare=False)
    #: A Map item's success: the Map it belongs to (its own statement, no successors).
    map_item: str | None = None


class _Verdict(Enum):
    WAIT = "wait"
    QUEUE = "queue"
    SKIP = "skip"
    CANCEL = "cancel"


class WorkflowPlan:
    """The graph of one workflow schema, prepared for the rules above."""

    def __init__(self, schema: WorkflowSchema) -> None:
        self.workflow_id = schema.workflow_id
        self.version = schema.version
        self.hash = schema.hash
        self.order: tuple[str, ...] = tuple(schema.step_names)
        self.outputs: tuple[str, ...] = tuple(schema.outputs)
        inbound: dict[str, dict[str, set[str | None]]] = {n: {} for n in self.order}
        successors: dict[str, list[str]] = {n: [] for n in self.order}
        actions: dict[str, set[str]] = {n: set() for n in self.order}
        for edge in schema.edges:
            source, target, action = edge["source"], edge["target"], edge.get("action")
            inbound[target].setdefault(source, set()).add(action)
            if target not in successors[source]:
                successors[source].append(target)
            if action is not None:
                actions[source].add(action)
        groups: dict[str, list[tuple[str, ...]]] = {n: [] for n in self.order}
        for group in schema.or_groups:
            members = tuple(group["members"])
            missing = [m for m in members if m not in inbound[group["step"]]]
            if missing:
                raise WorkflowDefinitionError(
                    f"OR group of step {group['step']!r} names {missing} without an edge"
                )
            groups[group["step"]].append(members)
        nodes: dict[str, StepNode] = {}
        for spec in schema.steps:
            name = spec["name"]
            grouped = {m for g in groups[name] for m in g}
            slots = [g for g in groups[name]]
            slots += [(p,) for p in inbound[name] if p not in grouped]
            consumes = {m for members in spec.get("dependencies", {}).values() for m in members}
            nodes[name] = StepNode(
                name=name,
                max_attempts=int(spec.get("max_attempts", 3)),
                slots=tuple(dict.fromkeys(slots)),
                successors=tuple(successors[name]),
                actions=frozenset(actions[name]),
                inbound={p: frozenset(a) for p, a in inbound[name].items()},
                consumes=frozenset(consumes),
            )
        self.nodes = nodes
        self._check_acyclic()
        self.scheduling = scheduling_of(schema)
        self.fast_reports = self._fast_reports(bool(schema.or_groups))

    def _fast_reports(self, has_or_groups: bool) -> dict[str, FastReport]:
        ancestors: dict[str, set[str]] = {}
        for name in self.order:
            found: set[str] = set()
            for predecessor in self.nodes[name].inbound:
                found |= {predecessor} | ancestors[predecessor]
            ancestors[name] = found
        fast: dict[str, FastReport] = {}
        for name, node in self.nodes.items():
            if node.actions:
                continue  # a branch decides between successors: the general path
            if any(self.scheduling.steps[t].parked for t in node.successors):
                continue  # a Sleep's clock, a fan-out, a child, a signal start when queued: the general path
            if node.successors:
                if all(self.nodes[t].slots == ((name,),) for t in node.successors):
                    consumers = tuple(t for t in node.successors if name in self.nodes[t].consumes)
                    fast[name] = FastReport(node.successors, consumers, consumed_as=json.dumps([name]))
            elif (
                not has_or_groups  # without OR joins, every ancestor is final when a step runs
                and self.outputs == (name,)
                and len(ancestors[name]) == len(self.order) - 1
            ):
                fast[name] = FastReport(finalizes=True)
        return fast

    def _check_acyclic(self) -> None:
        position = {name: i for i, name in enumerate(self.order)}
        for node in self.nodes.values():
            for predecessor in node.inbound:
                if position[predecessor] >= position[node.name]:
                    raise WorkflowDefinitionError(
                        f"workflow {self.workflow_id!r}: steps are not in dependency order "
                        f"({predecessor!r} must come before {node.name!r}) or form a cycle"
                    )

    @property
    def roots(self) -> list[str]:
        return [n for n in self.order if not self.nodes[n].slots]

    def chosen_action(self, step: str, result: Any) -> str | None:
        """The branch a SUCCEEDED step took: its result if that names one of its actions."""
        node = self.nodes.get(step)  # a Map item has no node and no branches
        if node is not None and node.actions and isinstance(result, str) and result in node.actions:
            return result
        return None

    def settle(self, view: Mapping[str, StepView], candidates: Iterable[str]) -> Progress:
        """Decide the PENDING steps among ``candidates`` (and what that unlocks).

        ``view`` is updated in place with the new states, so the caller can
        ask :meth:`outcome` afterwards.
        """
        progress = Progress()
        work = deque(candidates)
        while work:
            name = work.popleft()
            step = view[name]
            if step.state is not Status.PENDING:
                continue
            verdict, inputs_from = self._verdict(self.nodes[name], view)
            if verdict is _Verdict.QUEUE:
                step.state = Status.QUEUED
                progress.queued[name] = inputs_from
            elif verdict is _Verdict.SKIP:
                step.state = Status.SKIPPED
                progress.skipped.append(name)
                work.extend(self.nodes[name].successors)
            elif verdict is _Verdict.CANCEL:
                step.state = Status.CANCELLED
                progress.cancelled.append(name)
                work.extend(self.nodes[name].successors)
        return progress

    def knows(self, step: str) -> bool:
        """Whether ``step`` is one of its steps, or an item ``name[i]`` of one of its Maps."""
        if step in self.nodes:
            return True
        base, _, index = step[:-1].rpartition("[") if step.endswith("]") else ("", "", "")
        return index.isdigit() and base in self.nodes and self.scheduling.steps[base].map is not None

    def successors(self, step: str) -> tuple[str, ...]:
        return self.nodes[step].successors

    def outcome(self, view: Mapping[str, StepView]) -> Status | None:
        """The instance's final status once every step is final, else None."""
        states = [v.state for v in view.values()]
        if any(s in UNFINISHED_STATES for s in states):
            return None
        return Status.FAILED if Status.FAILED in states else Status.SUCCEEDED

    def _verdict(self, node: StepNode, view: Mapping[str, StepView]) -> tuple[_Verdict, list[str]]:
        if not node.slots:
            return _Verdict.QUEUE, []
        satisfied: list[str] = []
        pending = failed = vetoed = False
        for slot in node.slots:
            taken = [m for m in slot if self._taken(m, node, view)]
            if taken:
                first = min(taken, key=lambda m: (view[m].finished, slot.index(m)))
                satisfied.append(first)
                continue
            states = [view[m].state for m in slot]
            if any(s in UNFINISHED_STATES for s in states):
                pending = True
            elif any(s in BROKEN_STATES for s in states):
                failed = True
            elif Status.SUCCEEDED in states:
                vetoed = True
        if failed:
            return _Verdict.CANCEL, []
        if vetoed:
            return _Verdict.SKIP, []
        if pending:
            return _Verdict.WAIT, []
        if not satisfied:
            return _Verdict.SKIP, []
        return _Verdict.QUEUE, [m for m in satisfied if m in node.consumes]

    @staticmethod
    def _taken(member: str, node: StepNode, view: Mapping[str, StepView]) -> bool:
        predecessor = view[member]
        return predecessor.state is Status.SUCCEEDED and predecessor.action in node.inbound[member]
