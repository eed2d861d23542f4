"""``WorkflowSchema``: what a broker stores, its JSON form and its content hash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fuseline import Computed, Condition, Depends, Step, Workflow, WorkflowSchema
from fuseline.errors import WorkflowDefinitionError
from fuseline.policies import RetryPolicy, StepTimeoutPolicy


class Load(Step):
    def run_step(self, n: int = 2) -> list[int]:
        return list(range(n))


class Count(Step):
    def run_step(self, items: Any = None) -> int:
        return len(items or [])


def build(
    *,
    retries: int = 2,
    extra_edge: bool = False,
    extra_step: bool = False,
    two_outputs: bool = False,
    action: str = "big",
) -> Workflow:
    """A small workflow with every schema feature; each flag changes one thing."""
    load = Load()
    backup = Load(name="backup")

    class Decide(Step):
        def run_step(self, items: Computed[list] = Depends([load, backup])) -> str:
            return "big" if len(items) > 5 else "small"

    decide = Decide(policies=[RetryPolicy(max_retries=retries, wait=0.5)])

    truthy = Condition(bool, "truthy")

    class Report(Step):
        def run_step(self, choice: Computed[str] = Depends(decide, condition=truthy)) -> str:
            return choice

    report = Report()
    count = Count()
    decide - action >> count
    if extra_edge:
        load >> count
    outputs: list[Step] = [report, count]
    if extra_step:
        outputs.append(Count(name="audit"))
    if two_outputs:
        outputs.append(load)
    return Workflow(outputs, workflow_id="schema-test", version="7", policies=[StepTimeoutPolicy(30)])


def test_schema_describes_steps_edges_or_groups_conditions_policies_and_outputs() -> None:
    data = build().to_schema().to_dict()

    assert data["workflow_id"] == "schema-test"
    assert data["version"] == "7"
    assert [s["name"] for s in data["steps"]] == ["load", "backup", "decide", "report", "count"]
    decide = data["steps"][2]
    assert decide["dependencies"] == {"items": ["load", "backup"]}
    assert decide["policies"] == [
        {"type": "retry", "config": {"max_retries": 2, "wait": 0.5, "backoff": 2.0, "max_wait": None}}
    ]
    assert decide["max_attempts"] == 3
    assert data["steps"][0]["inputs"] == ["n"]
    assert data["edges"] == [
        {"source": "load", "target": "decide", "action": None},
        {"source": "backup", "target": "decide", "action": None},
        {"source": "decide", "target": "report", "action": None},
        {"source": "decide", "target": "count", "action": "big"},
    ]
    assert data["or_groups"] == [{"step": "decide", "param": "items", "members": ["load", "backup"]}]
    assert data["conditions"] == [{"step": "report", "param": "choice", "description": "truthy"}]
    assert data["outputs"] == ["report", "count"]
    assert data["policies"] == [{"type": "timeout", "config": {"seconds": 30}}]


def test_json_round_trip_gives_an_equal_schema() -> None:
    schema = build().to_schema()

    text = schema.to_json()
    again = WorkflowSchema.from_json(text)

    assert again == schema
    assert again.hash == schema.hash
    assert again.to_json() == text
    assert json.loads(text)["hash"] == schema.hash


def test_hash_is_stable_across_builds() -> None:
    first, second = build().to_schema(), build().to_schema()
    assert first.hash == second.hash
    assert len(first.hash) == 64
    assert first.to_json() == second.to_json()


@pytest.mark.parametrize(
    "change",
    [
        {"extra_edge": True},
        {"extra_step": True},
        {"two_outputs": True},
        {"action": "huge"},
    ],
    ids=["edge", "step", "output", "action"],
)
def test_hash_changes_when_the_graph_changes(change: dict[str, Any]) -> None:
    assert build(**change).to_schema().hash != build().to_schema().hash


def test_hash_covers_a_retry_policy_the_broker_schedules() -> None:
    """A broker schedules a step's retries from its stored definition: changing them under the
    same version would leave running brokers on the old ones, so it is a changed definition."""
    before, after = build(retries=2).to_schema(), build(retries=9).to_schema()

    assert before.steps[2]["policies"] != after.steps[2]["policies"]
    assert before.hash != after.hash


def test_hash_ignores_policies_only_workers_apply() -> None:
    before = Workflow(Load(policies=[StepTimeoutPolicy(5)])).to_schema()
    after = Workflow(Load(policies=[StepTimeoutPolicy(50)])).to_schema()

    assert before.steps[0]["policies"] != after.steps[0]["policies"]
    assert before.hash == after.hash


def test_a_workflow_without_scheduling_hashes_as_it_did() -> None:
    """Queues, pauses and limits enter the hash only where set: existing ids do not change."""
    schema = Workflow(Load(), workflow_id="etl").to_schema()

    assert all("scheduling" not in step for step in schema.graph()["steps"])
    assert "scheduling" not in schema.graph()


def test_hash_changes_with_max_attempts() -> None:
    assert Workflow(Load(max_attempts=5)).to_schema().hash != Workflow(Load()).to_schema().hash


def test_from_dict_refuses_a_tampered_hash() -> None:
    data = build().to_schema().to_dict()
    data["hash"] = "0" * 64
    with pytest.raises(WorkflowDefinitionError, match="hash"):
        WorkflowSchema.from_dict(data)


def test_from_dict_refuses_content_changed_under_the_stated_hash() -> None:
    data = build().to_schema().to_dict()
    data["edges"].append({"source": "load", "target": "count", "action": None})
    with pytest.raises(WorkflowDefinitionError, match="hash"):
        WorkflowSchema.from_dict(data)


def test_from_dict_refuses_an_edge_to_an_unknown_step() -> None:
    data = build().to_schema().to_dict()
    del data["hash"]
    data["edges"].append({"source": "load", "target": "ghost", "action": None})
    with pytest.raises(WorkflowDefinitionError, match="unknown step"):
        WorkflowSchema.from_dict(data)


def test_from_dict_refuses_an_unknown_output_or_or_group_member() -> None:
    data = build().to_schema().to_dict()
    del data["hash"]
    with pytest.raises(WorkflowDefinitionError, match="output 'ghost'"):
        WorkflowSchema.from_dict({**data, "outputs": ["ghost"]})
    with pytest.raises(WorkflowDefinitionError, match="OR group"):
        WorkflowSchema.from_dict(
            {**data, "or_groups": [{"step": "decide", "param": "x", "members": ["ghost"]}]}
        )


def test_from_dict_refuses_missing_fields_and_other_formats() -> None:
    data = build().to_schema().to_dict()
    del data["hash"]
    with pytest.raises(WorkflowDefinitionError, match="malformed"):
        WorkflowSchema.from_dict({k: v for k, v in data.items() if k != "steps"})
    with pytest.raises(WorkflowDefinitionError, match="format"):
        WorkflowSchema.from_dict({**data, "format": 99})
    with pytest.raises(WorkflowDefinitionError, match="not valid JSON"):
        WorkflowSchema.from_json("{nope")


@pytest.mark.parametrize("bad", ["nul\x00byte", "new\nline", "tab\there", "del\x7f"])
def test_names_with_control_characters_are_rejected(bad: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match="control characters"):
        Workflow(Load(name=bad))
    with pytest.raises(WorkflowDefinitionError, match="control characters"):
        Workflow(Load(), workflow_id=bad)
    with pytest.raises(WorkflowDefinitionError, match="control characters"):
        Workflow(Load(), workflow_id="ok", version=bad)
    data = Workflow(Load(), workflow_id="ok").to_schema().to_dict()
    del data["hash"]
    data["steps"][0]["name"] = bad
    data["outputs"] = [bad]
    with pytest.raises(WorkflowDefinitionError, match="control characters"):
        WorkflowSchema.from_dict(data)


def test_an_empty_or_too_long_name_is_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError, match="non-empty"):
        Workflow(Load(), workflow_id="")
    with pytest.raises(WorkflowDefinitionError, match="limit is 200"):
        Workflow(Load(name="x" * 201))


@pytest.mark.parametrize(
    "name",
    [
        'it\'s "quoted"',
        "a; DROP TABLE fuseline_steps; --",
        "SELECT * FROM fuseline_instances WHERE 1=1",
        "🚀 launch ✨",
        "back\\slash %s {0}",
    ],
)
def test_printable_names_are_kept_verbatim(name: str, run_on_broker) -> None:
    step = Load(name=name)
    workflow = Workflow(step, workflow_id=name, version=name)

    assert list(workflow.steps) == [name]
    schema = workflow.to_schema()
    assert schema.workflow_id == name
    again = WorkflowSchema.from_json(schema.to_json())
    assert again.step_names == [name]
    assert again.outputs == (name,)
    assert again.hash == schema.hash

    info = run_on_broker(workflow, {"n": 3})
    assert info.workflow_id == name
    assert info.step(name).state == "SUCCEEDED"
    assert info.result == [0, 1, 2]
