"""``Workflow.params``: the inputs of the next ``_execute_step`` call in this thread.

Regression: ``params`` only accumulated. The worker guide's loop updates it
in place for each assignment, so an instance lacking an input silently got
an earlier instance's value, and threads running steps of different
instances saw each other's inputs.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fuseline import Status, Step, StepReport, Workflow
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.errors import MissingInput


class Greet(Step):
    def run_step(self, name: str, greeting: str) -> str:
        return f"{greeting} {name}"


def test_an_instance_lacking_an_input_does_not_get_an_earlier_instances_value() -> None:
    greet = Greet()
    workflow = Workflow(greet)

    workflow.params.update({"name": "ada", "greeting": "hi"})
    assert workflow._execute_step(greet, {}) == "hi ada"

    workflow.params.update({"name": "bob"})  # this instance has no "greeting"
    with pytest.raises(MissingInput) as caught:
        workflow._execute_step(greet, {})
    assert (caught.value.step_name, caught.value.input_name) == ("greet", "greeting")
    assert greet.state is Status.FAILED


def test_the_worker_guide_loop_fails_the_instance_that_lacks_an_input() -> None:
    """The guide's loop as written, over two instances: the second must not borrow "greeting"."""
    greet = Greet()
    workflow = Workflow(greet, workflow_id="greet")
    step_lookup = workflow.steps
    broker = MemoryBroker()
    first = workflow.dispatch(broker, {"name": "ada", "greeting": "hi"})
    second = workflow.dispatch(broker, {"name": "bob"})

    client = LocalBrokerClient(broker)
    worker_id = client.register_worker([workflow.to_schema()])
    missing: list[str] = []
    while True:
        assignment = client.get_step(worker_id)
        if assignment is None:
            break
        step = step_lookup[assignment.step_name]
        shared = {step_lookup[name]: val for name, val in assignment.payload.get("results", {}).items()}
        workflow.params.update(assignment.payload.get("workflow_inputs", {}))
        try:
            result = workflow._execute_step(step, shared)
        except MissingInput as exc:  # the guide's loop stops here; record it and report the failure
            missing.append(exc.input_name)
            result = None
        client.report_step(
            worker_id,
            StepReport(
                workflow_id=assignment.workflow_id,
                instance_id=assignment.instance_id,
                step_name=assignment.step_name,
                state=step.state,
                result=result,
            ),
        )

    assert broker.get_instance(first).result == "hi ada"
    assert broker.get_instance(second).status is Status.FAILED
    assert missing == ["greeting"]


def test_threads_executing_steps_of_different_instances_see_only_their_own_params() -> None:
    greet = Greet()
    workflow = Workflow(greet)
    both_updated = threading.Barrier(2, timeout=5)
    results: dict[str, Any] = {}

    def worker(name: str) -> None:
        workflow.params.update({"name": name, "greeting": "hello"})
        both_updated.wait()  # the other thread has written its params too
        results[name] = workflow._execute_step(greet, {})

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("ada", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == {"ada": "hello ada", "bob": "hello bob"}


def test_params_can_be_assigned_and_are_consumed_by_the_next_execute_step() -> None:
    greet = Greet()
    workflow = Workflow(greet)

    workflow.params = {"name": "ada", "greeting": "hey"}
    assert workflow.params == {"name": "ada", "greeting": "hey"}
    assert workflow._execute_step(greet, {}) == "hey ada"
    assert workflow.params == {}

    # explicit inputs win, and the call still consumes what was set
    workflow.params.update({"name": "old", "greeting": "stale"})
    assert workflow._execute_step(greet, {}, {"name": "bob", "greeting": "yo"}) == "yo bob"
    assert workflow.params == {}

    workflow.params.update({"name": "cy", "greeting": "hi"})
    workflow.params.clear()
    with pytest.raises(MissingInput):
        workflow._execute_step(greet, {})
