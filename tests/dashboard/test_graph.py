"""The DAG layout on its own: layers by longest path, Map items inside their step, no overlaps."""

from __future__ import annotations

from datetime import datetime, timezone

from fuseline.broker.base import StepInfo
from fuseline.service.dashboard.graph import HEADER, MAX_ITEMS, NODE_WIDTH, layout, shape_of
from fuseline.states import Status
from tests.dashboard.flows import pipeline

NOW = datetime.now(timezone.utc)


def step(name: str, state: Status = Status.PENDING) -> StepInfo:
    return StepInfo(name, state, 0, None, None, None, None, None)


def test_layers_follow_the_longest_path_and_edges_point_right() -> None:
    steps = [
        step("prepare", Status.SUCCEEDED),
        step("slow", Status.RUNNING),
        step("fan"),
        step("tail"),
        step("finish"),
    ]
    graph = layout(pipeline.to_schema(), steps)
    x = {n.name: n.x for n in graph.nodes}
    assert x["prepare"] < x["slow"] < x["fan"] == x["tail"] < x["finish"]
    assert {n.name: n.state for n in graph.nodes}["slow"] is Status.RUNNING
    assert len(graph.edges) == 5
    for edge in graph.edges:
        assert x[edge.source] < x[edge.target]
    same_layer = sorted((n for n in graph.nodes if n.name in ("fan", "tail")), key=lambda n: n.y)
    assert same_layer[0].y + same_layer[0].height <= same_layer[1].y  # no overlap
    assert graph.width >= 4 * NODE_WIDTH and graph.height > 2 * HEADER


def test_map_items_are_drawn_inside_their_map_step() -> None:
    items = [step(f"fan[{i}]", Status.SUCCEEDED) for i in range(MAX_ITEMS + 7)]
    graph = layout(
        pipeline.to_schema(),
        [step("prepare"), step("slow"), step("fan"), step("tail"), step("finish"), *items],
    )
    nodes = {n.name: n for n in graph.nodes}
    assert set(nodes) == {"prepare", "slow", "fan", "tail", "finish"}
    fan = nodes["fan"]
    assert len(fan.items) == MAX_ITEMS and fan.more_items == 7
    assert fan.items[0].name == "fan[0]" and fan.height > HEADER
    assert all(0 <= i.x < NODE_WIDTH and HEADER <= i.y < fan.height for i in fan.items)


def test_without_a_definition_the_steps_still_show() -> None:
    graph = layout(None, [step("a"), step("b", Status.FAILED), step("b[0]")])
    assert [n.name for n in graph.nodes] == ["a", "b"] and graph.edges == []
    assert graph.nodes[1].items[0].name == "b[0]"


def test_the_shape_changes_when_steps_appear() -> None:
    assert shape_of([step("a")]) == shape_of([step("a", Status.SUCCEEDED)])
    assert shape_of([step("a")]) != shape_of([step("a"), step("a[0]")])
