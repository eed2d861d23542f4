"""The worker guide's code runs as written (DESIGN: every snippet in it must run).

The python blocks are read from ``docs/implementing-workers.md`` at test time,
so an edit to the guide that breaks a snippet fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fuseline import Status, StepReport
from fuseline.broker import MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine

HERE = Path(__file__).resolve().parent
GUIDE = HERE.parents[1] / "docs" / "implementing-workers.md"
STEPS = ["normalise_query", "retrieve_documents", "expand_query", "generate_answer"]


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)


def run_block(index: int, namespace: dict[str, Any]) -> dict[str, Any]:
    code = compile(python_blocks()[index], f"{GUIDE}:python-block-{index + 1}", "exec")
    exec(code, namespace)  # running the documented snippet is the point
    return namespace


@pytest.fixture
def my_workflows(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The guide's ``my_workflows`` module, importable by that name, with fresh run counts."""
    monkeypatch.syspath_prepend(str(HERE))
    module = importlib.import_module("my_workflows")
    module.RUNS.clear()
    return module


def expected_answer(question: str) -> dict[str, Any]:
    query = " ".join(question.lower().split())
    documents = [f"doc 1 on {query}", f"doc 2 on {query}"]
    return {"answer": f"what is {query}? see 2 documents", "sources": documents}


def test_the_guide_has_the_two_python_blocks_this_file_runs() -> None:
    blocks = python_blocks()
    assert len(blocks) == 2
    assert "from my_workflows import rag_workflow" in blocks[0]
    assert "engine.work()" in blocks[0]
    assert "workflow._execute_step(step, shared)" in blocks[1]


def test_the_process_engine_block_runs_as_written(my_workflows: ModuleType) -> None:
    namespace = run_block(0, {"__name__": "worker_guide"})
    engine = namespace["engine"]
    try:
        assert isinstance(engine, ProcessEngine)
        assert namespace["rag_workflow"] is my_workflows.rag_workflow
        broker = namespace["broker"]
        assert isinstance(broker, MemoryBroker)
        assert broker.list_instances() == []
        assert [w.worker_id for w in broker.list_workers()] == [engine.worker_id]
        assert sum(my_workflows.RUNS.values()) == 0
    finally:
        engine.close()


def test_the_process_engine_block_runs_a_dispatched_instance(my_workflows: ModuleType) -> None:
    namespace = run_block(0, {"__name__": "worker_guide"})
    broker, engine = namespace["broker"], namespace["engine"]
    try:
        instance_id = my_workflows.rag_workflow.dispatch(broker, {"question": "  What IS  Fuseline "})

        assert engine.work() == 4
    finally:
        engine.close()

    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED
    assert info.result == expected_answer("What is fuseline")
    assert [(s.name, s.state, s.attempt) for s in info.steps] == [(n, Status.SUCCEEDED, 1) for n in STEPS]
    assert dict(my_workflows.RUNS) == dict.fromkeys(STEPS, 1)


def custom_worker_namespace(broker: MemoryBroker, my_workflows: ModuleType) -> dict[str, Any]:
    workflow = my_workflows.rag_workflow
    return {
        "__name__": "worker_guide",
        "broker": broker,
        "workflow": workflow,
        "step_lookup": workflow.steps,
        "StepReport": StepReport,
        "LocalBrokerClient": LocalBrokerClient,
    }


def test_the_custom_worker_block_runs_an_instance_with_a_join(my_workflows: ModuleType) -> None:
    broker = MemoryBroker()
    instance_id = my_workflows.rag_workflow.dispatch(broker, {"question": "Durable workflows"})

    namespace = run_block(1, custom_worker_namespace(broker, my_workflows))

    assert namespace["assignment"] is None  # the loop drained the queue and stopped
    info = broker.get_instance(instance_id)
    assert info.status is Status.SUCCEEDED
    assert info.result == expected_answer("durable workflows")
    assert [(s.name, s.state, s.attempt) for s in info.steps] == [(n, Status.SUCCEEDED, 1) for n in STEPS]
    assert dict(my_workflows.RUNS) == dict.fromkeys(STEPS, 1)
    assert [w.worker_id for w in broker.list_workers()] == [namespace["worker_id"]]


def test_the_custom_worker_block_keeps_instances_apart(my_workflows: ModuleType) -> None:
    broker = MemoryBroker()
    questions = ["first question", "second one", "third"]
    ids = [my_workflows.rag_workflow.dispatch(broker, {"question": q}) for q in questions]

    run_block(1, custom_worker_namespace(broker, my_workflows))

    assert [broker.get_instance(i).result for i in ids] == [expected_answer(q) for q in questions]
    assert dict(my_workflows.RUNS) == dict.fromkeys(STEPS, 3)
