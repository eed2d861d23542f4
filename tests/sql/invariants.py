"""What must hold after workers drained a set of instances."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.verify import verify
from tests.sql.workflows import read_ledger


def assert_instances_succeeded(broker: SqlBroker, expected: Mapping[str, Any]) -> None:
    """Each instance SUCCEEDED with its expected result; every step SUCCEEDED on its first attempt."""
    for instance_id, result in expected.items():
        info = broker.get_instance(instance_id)
        assert info.status is Status.SUCCEEDED, (instance_id, info.status, info.error)
        assert info.result == result, (instance_id, info.result, result)
        for step in info.steps:
            assert step.state is Status.SUCCEEDED, (instance_id, step.name, step.state)
            assert step.attempt == 1, (instance_id, step.name, step.attempt)


def assert_nothing_running(broker: SqlBroker) -> None:
    """No step is left to run, and ``fuseline db verify`` finds no violated invariant."""
    assert [str(v) for v in verify(broker.engine)] == []
    with broker.engine.connect() as conn:
        running = conn.execute(
            sa.text("SELECT count(*) FROM fuseline_steps WHERE state IN ('RUNNING', 'QUEUED', 'PENDING')")
        ).scalar_one()
    assert running == 0


def assert_ran_exactly_once(
    ledger: Path, instance_ids: Iterable[str], step_names: Sequence[str]
) -> list[tuple[str, str, int, int]]:
    """The ledger has exactly one line per (instance, step), all of attempt 1; returns the lines."""
    rows = read_ledger(ledger)
    executions = Counter((instance_id, step_name) for instance_id, step_name, _, _ in rows)
    expected = {(instance_id, name): 1 for instance_id in instance_ids for name in step_names}
    duplicated = {key: n for key, n in executions.items() if n != 1}
    assert not duplicated, f"steps that ran more than once: {sorted(duplicated.items())[:10]}"
    missing = sorted(set(expected) - set(executions))
    assert not missing, f"steps that never ran: {missing[:10]}"
    unexpected = sorted(set(executions) - set(expected))
    assert not unexpected, f"unexpected ledger lines: {unexpected[:10]}"
    assert {attempt for _, _, attempt, _ in rows} == {1}
    return rows
