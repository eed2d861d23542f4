"""Step names, cycles, ``workflow.steps`` and the default ``workflow_id``."""

from __future__ import annotations

import re

import pytest

from fuseline import Computed, Depends, FunctionStep, Step, Workflow
from fuseline.errors import WorkflowDefinitionError


class Add(Step):
    def run_step(self, x: int = 1) -> int:
        return x + 1


class FetchURLs(Step):
    def run_step(self) -> list[str]:
        return []


class HTTPServerError(Step):
    def run_step(self) -> None:
        return None


class Add2(Step):
    def run_step(self) -> int:
        return 2


def test_an_explicit_name_is_used() -> None:
    workflow = Workflow(Add(name="increment"))
    assert list(workflow.steps) == ["increment"]


def test_class_names_become_snake_case() -> None:
    workflow = Workflow([FetchURLs(), HTTPServerError(), Add2()])
    assert list(workflow.steps) == ["fetch_urls", "http_server_error", "add2"]


def test_function_names_are_used_as_is() -> None:
    def loadCSVFile() -> int:  # camelCase on purpose
        return 1

    def clean_rows(rows: Computed[int] = Depends(loadCSVFile)) -> int:
        return rows

    assert list(Workflow(clean_rows).steps) == ["load_csv_file", "clean_rows"]


def test_a_class_level_name_attribute_is_an_explicit_name() -> None:
    class Named(Step):
        name = "the_named_one"

        def run_step(self) -> int:
            return 1

    assert list(Workflow(Named()).steps) == ["the_named_one"]


def test_repeated_names_are_deduplicated_in_graph_order() -> None:
    first, second, third = Add(), Add(), Add()

    class Total(Step):
        def run_step(
            self,
            a: Computed[int] = Depends(first),
            b: Computed[int] = Depends(second),
            c: Computed[int] = Depends(third),
        ) -> int:
            return a + b + c

    workflow = Workflow(Total())

    assert list(workflow.steps) == ["add", "add_2", "add_3", "total"]
    assert workflow.steps["add"] is first
    assert workflow.steps["add_2"] is second
    assert workflow.steps["add_3"] is third
    assert workflow.run({"x": 1}) == 6


def test_deduplication_is_the_same_for_every_build_of_the_same_graph() -> None:
    def build() -> list[str]:
        a, b = Add(), Add()
        joined = Add()
        [a, b] >> joined
        return list(Workflow(joined).steps)

    assert build() == build() == ["add", "add_2", "add_3"]


def test_an_explicit_name_keeps_its_name_and_defaults_move_aside() -> None:
    default = Add()
    explicit = Add(name="add")
    default >> explicit

    workflow = Workflow(explicit)

    assert workflow.steps == {"add_2": default, "add": explicit}


def test_two_steps_with_the_same_explicit_name_are_rejected() -> None:
    a, b = Add(name="same"), Add(name="same")
    a >> b
    with pytest.raises(WorkflowDefinitionError, match="two steps are named 'same'"):
        Workflow(b)


def test_steps_named_by_one_workflow_can_be_combined_in_another() -> None:
    """Regression: a workflow wrote its generated names onto the steps, so a later
    workflow saw them as explicit names and refused two steps both called 'add'."""
    a, b = Add(), Add()
    assert list(Workflow(a).steps) == ["add"]
    assert list(Workflow(b).steps) == ["add"]

    combined = Workflow([a, b])

    assert combined.steps == {"add": a, "add_2": b}


def test_step_names_do_not_depend_on_which_workflows_were_built_before() -> None:
    """Two processes that import different sets of modules must name a workflow's steps alike."""

    def fetch() -> int:
        return 1

    class Fetch(Step):
        def run_step(self) -> int:
            return 2

    fetch_cls = Fetch()
    fetch_fn = FunctionStep.for_function(fetch)
    # another module builds a workflow where the function comes second ...
    assert list(Workflow([fetch_cls, fetch_fn]).steps) == ["fetch", "fetch_2"]
    # ... which must not change the names of a workflow holding only the function
    assert list(Workflow(fetch).steps) == ["fetch"]


def test_cycles_are_rejected_with_the_cycle_in_edge_order() -> None:
    a, b, c = Add(name="a"), Add(name="b"), Add(name="c")
    a >> b
    b >> c
    c >> a

    with pytest.raises(WorkflowDefinitionError) as caught:
        Workflow(c)

    message = str(caught.value)
    assert "cycle" in message
    found = re.search(r"cycle: (.*)$", message)
    assert found is not None
    shown = found.group(1)
    # any rotation of the real cycle a >> b >> c >> a, in the direction of the edges
    assert shown in ("a >> b >> c >> a", "b >> c >> a >> b", "c >> a >> b >> c")


def test_steps_maps_names_to_steps_in_dependency_order() -> None:
    def load() -> int:
        return 1

    class Transform(Step):
        def run_step(self, v: Computed[int] = Depends(load)) -> int:
            return v

    transform = Transform()
    workflow = Workflow(transform)

    steps = workflow.steps
    assert list(steps) == ["load", "transform"]
    assert steps["transform"] is transform
    assert steps["load"] is FunctionStep.for_function(load)
    steps.clear()  # a copy: the workflow is unaffected
    assert list(workflow.steps) == ["load", "transform"]
    assert workflow.name_of(transform) == "transform"


def test_the_default_workflow_id_is_readable_and_deterministic() -> None:
    def build() -> Workflow:
        first, second = Add(), Add()
        first >> second
        return Workflow(second)

    one, two = build(), build()

    assert one.workflow_id == two.workflow_id
    assert re.fullmatch(r"add_2-[0-9a-f]{10}", one.workflow_id)
    assert one.to_schema().workflow_id == one.workflow_id


def test_the_default_workflow_id_changes_with_the_graph() -> None:
    a, b, c = Add(), Add(), Add()
    b >> c
    assert Workflow(a).workflow_id != Workflow(c).workflow_id


def test_an_explicit_workflow_id_and_version_are_kept() -> None:
    workflow = Workflow(Add(), workflow_id="etl", version=3)
    assert (workflow.workflow_id, workflow.version) == ("etl", "3")
    assert workflow.to_schema().key == ("etl", "3")


def test_a_workflow_needs_an_output() -> None:
    with pytest.raises(WorkflowDefinitionError, match="at least one output"):
        Workflow([])
