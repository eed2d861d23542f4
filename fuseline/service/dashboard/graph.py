"""An instance's DAG laid out for an inline SVG: steps as boxes in layers, edges as curves.

Layered left to right: a step's layer is the longest path to it from a root, so every
edge points rightwards. Within a layer, steps follow the mean position of their
predecessors (one pass, which untangles most crossings of real workflows cheaply) and
then the definition's order. A Map step carries its items (``step[i]``) as small squares
inside its box, so a fan-out of a thousand items stays one box. Computed on the server:
the page needs no layout library, and the same layout serves the live refresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...broker.base import StepInfo
from ...broker.scheduling import item_base
from ...states import Status
from ...workflow.schema import WorkflowSchema

NODE_WIDTH = 176
HEADER = 40
GAP_X = 64
GAP_Y = 22
PAD = 16
ITEM = 10
ITEM_GAP = 3
ITEMS_PER_ROW = 12
#: Items drawn per Map box; the rest are counted in a line of text.
MAX_ITEMS = 240
NAME_CHARS = 22


@dataclass(frozen=True)
class Item:
    name: str
    state: Status
    x: float
    y: float


@dataclass
class Node:
    name: str
    kind: str
    state: Status
    x: float = 0.0
    y: float = 0.0
    height: float = HEADER
    items: list[Item] = field(default_factory=list)
    more_items: int = 0
    child_instance_id: str | None = None

    @property
    def label(self) -> str:
        return self.name if len(self.name) <= NAME_CHARS else self.name[: NAME_CHARS - 1] + "…"

    @property
    def width(self) -> int:
        return NODE_WIDTH


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    action: str | None
    label_x: float
    label_y: float


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float
    #: Changes when steps or items appear: the page then fetches the layout again.
    shape: str


def shape_of(steps: Sequence[StepInfo]) -> str:
    """A short fingerprint of which steps and items an instance has."""
    names = "\n".join(sorted(s.name for s in steps))
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def layout(schema: WorkflowSchema | None, steps: Sequence[StepInfo]) -> Graph:
    """The drawing of an instance's steps over its workflow's definition (None: no edges)."""
    by_name = {s.name: s for s in steps}
    kinds = {spec["name"]: str(spec.get("kind", "step")) for spec in schema.steps} if schema else {}
    order = list(kinds) if schema else [s.name for s in steps if item_base(s.name) == s.name]
    edges = [(e["source"], e["target"], e.get("action")) for e in schema.edges] if schema else []
    nodes = {name: _node(name, kinds.get(name, "step"), by_name.get(name)) for name in order}
    edges = [e for e in edges if e[0] in nodes and e[1] in nodes]
    _add_items(nodes, steps)
    layers = _layers(order, edges)
    _place(nodes, layers, edges)
    width = PAD * 2 + len(layers) * NODE_WIDTH + max(0, len(layers) - 1) * GAP_X
    height = PAD * 2 + max(
        (sum(nodes[n].height + GAP_Y for n in layer) - GAP_Y for layer in layers), default=0
    )
    return Graph(list(nodes.values()), [_edge(nodes, *e) for e in edges], width, height, shape_of(steps))


def _node(name: str, kind: str, step: StepInfo | None) -> Node:
    state = step.state if step is not None else Status.PENDING
    child = step.child_instance_id if step is not None else None
    return Node(name, kind, state, child_instance_id=child)


def _add_items(nodes: dict[str, Node], steps: Sequence[StepInfo]) -> None:
    for step in steps:
        base = item_base(step.name)
        node = nodes.get(base)
        if base == step.name or node is None:
            continue
        if len(node.items) >= MAX_ITEMS:
            node.more_items += 1
            continue
        index = len(node.items)
        x = 8 + (index % ITEMS_PER_ROW) * (ITEM + ITEM_GAP)
        y = HEADER + (index // ITEMS_PER_ROW) * (ITEM + ITEM_GAP)
        node.items.append(Item(step.name, step.state, x, y))
    for node in nodes.values():
        if node.items:
            rows = (len(node.items) + ITEMS_PER_ROW - 1) // ITEMS_PER_ROW
            node.height = HEADER + rows * (ITEM + ITEM_GAP) + (18 if node.more_items else 6)


def _layers(order: list[str], edges: list[tuple[str, str, str | None]]) -> list[list[str]]:
    """Steps by layer: the longest path from a root (the definition lists dependencies first)."""
    predecessors: dict[str, list[str]] = {name: [] for name in order}
    for source, target, _ in edges:
        if source in predecessors and target in predecessors and source not in predecessors[target]:
            predecessors[target].append(source)
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = max((depth.get(p, 0) + 1 for p in predecessors[name]), default=0)
    layers: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    position: dict[str, float] = {}
    for index, name in enumerate(order):
        position[name] = index
    for number, layer in enumerate(layers):
        members = [n for n in order if depth[n] == number]
        if number > 0:
            members.sort(key=lambda n: _mean([position[p] for p in predecessors[n]], position[n]))
        for index, name in enumerate(members):
            position[name] = index
        layer.extend(members)
    return layers


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _place(nodes: dict[str, Node], layers: list[list[str]], edges: list[tuple[str, str, str | None]]) -> None:
    tallest = max((sum(nodes[n].height + GAP_Y for n in layer) - GAP_Y for layer in layers), default=0)
    for number, layer in enumerate(layers):
        used = sum(nodes[n].height + GAP_Y for n in layer) - GAP_Y
        y = PAD + (tallest - used) / 2
        for name in layer:
            nodes[name].x = PAD + number * (NODE_WIDTH + GAP_X)
            nodes[name].y = y
            y += nodes[name].height + GAP_Y


def _edge(nodes: dict[str, Node], source: str, target: str, action: str | None) -> Edge:
    start, end = nodes[source], nodes[target]
    x1, y1 = start.x + NODE_WIDTH, start.y + HEADER / 2
    x2, y2 = end.x, end.y + HEADER / 2
    bend = max(24.0, (x2 - x1) / 2)
    path = f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    return Edge(source, target, path, action, (x1 + x2) / 2, (y1 + y2) / 2 - 4)
