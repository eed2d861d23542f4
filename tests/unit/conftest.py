"""Fixtures for the unit tests: run a workflow on a real in-memory broker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from fuseline import Workflow
from fuseline.broker import InstanceInfo, MemoryBroker
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine

RunOnBroker = Callable[..., InstanceInfo]


@pytest.fixture
def run_on_broker() -> RunOnBroker:
    """Dispatch one instance to a MemoryBroker, drain it with a ProcessEngine, return its info.

    Unlike ``Workflow.run`` this shows every step's final state (SKIPPED, CANCELLED, ...).
    """

    def run(workflow: Workflow, inputs: Mapping[str, Any] | None = None) -> InstanceInfo:
        broker = MemoryBroker()
        engine = ProcessEngine(LocalBrokerClient(broker), [workflow])
        try:
            instance_id = workflow.dispatch(broker, inputs)
            engine.work()
        finally:
            engine.close()
        return broker.get_instance(instance_id)

    return run
