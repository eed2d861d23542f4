"""Join race (RELIABILITY item 5): eight branches finish at once on four worker processes.

``root >> [b1 .. b8] >> join``, once with an AND join and once with an OR
join (``Depends([b1, .., b8])``). The join must be queued and run exactly
once per instance, the AND join with every branch's result, the OR join
with exactly one of them, and each instance must end exactly once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fuseline.broker.sql import SqlBroker
from tests.sql.invariants import assert_instances_succeeded, assert_nothing_running, assert_ran_exactly_once
from tests.sql.processes import RunWorkers, dialect_of
from tests.sql.workflows import BRANCHES, branch_value, fan_in_and, fan_in_or

pytestmark = pytest.mark.slow

STEPS = ("root", *(f"b{i}" for i in range(1, BRANCHES + 1)), "join")


def test_and_and_or_joins_are_queued_and_run_once_per_instance(
    db_url: str, broker: SqlBroker, run_workers: RunWorkers, tmp_path: Path, record_property
) -> None:
    dialect = dialect_of(db_url)
    per_workflow = 50 if dialect == "postgres" else 15
    ledger = tmp_path / "ledger"
    inputs = [{"log": str(ledger), "n": n} for n in range(per_workflow)]
    and_ids = broker.dispatch_many(fan_in_and.to_schema(), inputs)
    or_ids = broker.dispatch_many(fan_in_or.to_schema(), inputs)

    run = run_workers(db_url, ["fan_in_and", "fan_in_or"], count=4)

    run.check_clean_exit()
    branch_values = {n: [branch_value(n, i) for i in range(1, BRANCHES + 1)] for n in range(per_workflow)}
    assert_instances_succeeded(broker, {i: branch_values[n] for n, i in enumerate(and_ids)})
    for n, instance_id in enumerate(or_ids):
        result = broker.get_instance(instance_id).result
        assert isinstance(result, int), f"the OR join got {result!r}, not one value"
        assert result in branch_values[n]
    assert_nothing_running(broker)
    assert_ran_exactly_once(ledger, [*and_ids, *or_ids], STEPS)
    for instance_id in [*and_ids, *or_ids]:
        kinds = Counter((e.kind, e.step_name) for e in broker.instance_events(instance_id))
        assert kinds[("queued", "join")] == 1, (instance_id, kinds)
        assert kinds[("instance_succeeded", None)] == 1, (instance_id, kinds)
        assert sum(n for (kind, _), n in kinds.items() if kind.startswith("instance_")) == 1

    steps = len(STEPS) * 2 * per_workflow
    record_property(
        "join_race", f"{dialect}: {2 * per_workflow} instances, {steps} steps, {run.seconds:.2f} s"
    )
    print(f"\n[sql join race] {dialect}: {2 * per_workflow} instances, {steps} steps, {run.seconds:.2f} s")
