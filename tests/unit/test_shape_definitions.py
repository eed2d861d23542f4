"""Map, SubWorkflow and WaitFor as definitions: what the schema says, and what is refused
at definition time with a clear error (nothing reaches a broker)."""

from __future__ import annotations

import pytest

from fuseline import Depends, FunctionStep, Map, SubWorkflow, WaitFor, Workflow
from fuseline.broker.scheduling import MAPS_QUEUE, SIGNALS_QUEUE, scheduling_of
from fuseline.errors import WorkflowDefinitionError


def rows(n: int) -> list[int]:
    return list(range(n))


def double(item: int) -> int:
    return 2 * item


def no_item(x: int) -> int:
    return x


def test_a_map_is_described_in_the_schema_and_its_item_is_no_workflow_input() -> None:
    mapped = Map(FunctionStep(double), over=FunctionStep(rows), max_items=50, name="doubled")
    schema = Workflow(outputs=mapped, workflow_id="w").to_schema()

    spec = {s["name"]: s for s in schema.steps}["doubled"]
    assert spec["map"] == {"over": "rows", "max_items": 50}
    assert spec["inputs"] == []
    assert {"source": "rows", "target": "doubled", "action": None} in [dict(e) for e in schema.edges]
    assert scheduling_of(schema).steps["doubled"].waits_in == MAPS_QUEUE


def test_the_hash_of_a_workflow_changes_with_its_map_limit() -> None:
    def flow(limit: int) -> str:
        return (
            Workflow(outputs=Map(FunctionStep(double), over=FunctionStep(rows), max_items=limit))
            .to_schema()
            .hash
        )

    assert flow(10) != flow(20)


def test_a_mapped_step_without_an_item_parameter_is_refused() -> None:
    with pytest.raises(WorkflowDefinitionError, match="needs a parameter named 'item'"):
        Map(FunctionStep(no_item), over=FunctionStep(rows))


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, 2_000_000])
def test_a_bad_max_items_is_refused(limit: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="max_items"):
        Map(FunctionStep(double), over=FunctionStep(rows), max_items=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -5, float("nan"), float("inf"), "10", True])
def test_a_bad_wait_timeout_is_refused(timeout: object) -> None:
    with pytest.raises(WorkflowDefinitionError, match="WaitFor timeout"):
        WaitFor("approved", timeout=timeout)  # type: ignore[arg-type]


def test_a_wait_is_described_in_the_schema() -> None:
    schema = Workflow(outputs=WaitFor("approved", timeout=60), workflow_id="w").to_schema()

    (spec,) = schema.steps
    assert (spec["name"], spec["wait_for"]) == ("wait_for_approved", {"signal": "approved", "timeout": 60.0})
    assert scheduling_of(schema).steps["wait_for_approved"].waits_in == SIGNALS_QUEUE


def test_a_subworkflow_embeds_its_child_and_names_what_its_inputs_take() -> None:
    child = Workflow(outputs=FunctionStep(double), workflow_id="child")
    start = FunctionStep(rows, name="start")
    parent = Workflow(outputs=SubWorkflow(child, inputs={"item": Depends(start), "mode": "x"}, name="call"))

    spec = {s["name"]: s for s in parent.to_schema().steps}["call"]
    assert spec["subworkflow"]["schema"]["workflow_id"] == "child"
    assert spec["subworkflow"]["inputs"] == {"item": {"step": "start"}, "mode": {"value": "x"}}
    assert parent.children == [child]


def test_a_subworkflow_needs_a_workflow() -> None:
    with pytest.raises(WorkflowDefinitionError, match="SubWorkflow needs a Workflow"):
        SubWorkflow(FunctionStep(double))  # type: ignore[arg-type]


def test_a_workflow_that_contains_itself_is_refused() -> None:
    inner = Workflow(outputs=FunctionStep(double), workflow_id="loop")
    middle = Workflow(outputs=SubWorkflow(inner), workflow_id="middle")

    with pytest.raises(WorkflowDefinitionError, match="'loop' contains itself through SubWorkflow"):
        Workflow(outputs=SubWorkflow(middle, name="again"), workflow_id="loop")


def test_a_map_item_name_resolves_to_its_map_in_the_workflow() -> None:
    mapped = Map(FunctionStep(double), over=FunctionStep(rows), name="doubled")
    flow = Workflow(outputs=mapped)

    assert flow.step_for("doubled[12]") is mapped
    assert flow.knows("doubled[0]")
    assert not flow.knows("rows[0]")  # not a Map
    assert not flow.knows("doubled[x]")
    assert not flow.knows("nothing[1]")


def test_workflow_run_fans_out_and_runs_children_in_process() -> None:
    child = Workflow(
        outputs=Map(FunctionStep(double), over=FunctionStep(rows), name="doubled"), workflow_id="kid"
    )
    start = FunctionStep(lambda n: n + 1, name="start")
    parent = Workflow(
        outputs=SubWorkflow(child, inputs={"n": Depends(start)}, name="call"), workflow_id="dad"
    )

    assert parent.run({"n": 3}) == [0, 2, 4, 6]
    assert child.run({"n": 0}) == []


def test_workflow_run_fails_a_map_over_a_non_list_naming_both_steps() -> None:
    flow = Workflow(outputs=Map(FunctionStep(double), over=FunctionStep(lambda: 5, name="five"), name="each"))

    run = flow.run_instance({})
    assert run.status.value == "FAILED"
    assert "Map 'each' runs over the result of 'five', which must be a list, not int" in (run.error or "")
