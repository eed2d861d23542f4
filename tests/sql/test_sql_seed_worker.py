"""The custom worker loop of docs/implementing-workers.md, unchanged, in three OS processes.

The loop is read from the guide when the test runs (its second ``python``
block), so the documentation cannot drift from what works on SqlBroker.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fuseline.broker.sql import SqlBroker
from tests.sql.invariants import assert_instances_succeeded, assert_nothing_running, assert_ran_exactly_once
from tests.sql.processes import REPOSITORY, RunWorkers
from tests.sql.workflows import diamond, diamond_result

pytestmark = pytest.mark.slow

GUIDE = REPOSITORY / "docs" / "implementing-workers.md"


def custom_worker_loop() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2, f"{GUIDE} no longer has the custom worker example"
    loop = blocks[1]
    assert "client.get_step(worker_id)" in loop and "client.report_step(" in loop
    return loop


def test_documented_custom_worker_loop_drains_diamonds_in_three_processes(
    db_url: str, broker: SqlBroker, run_workers: RunWorkers, tmp_path: Path
) -> None:
    seed_loop = tmp_path / "custom_worker_loop.py"
    seed_loop.write_text(custom_worker_loop())
    ledger = tmp_path / "ledger"
    ids = broker.dispatch_many(diamond.to_schema(), [{"log": str(ledger), "n": n} for n in range(30)])

    run = run_workers(db_url, ["diamond"], count=3, seed_loop=seed_loop)

    run.check_clean_exit()
    assert_instances_succeeded(broker, {i: diamond_result(n) for n, i in enumerate(ids)})
    assert_nothing_running(broker)
    assert_ran_exactly_once(ledger, ids, ("a", "b", "c", "d"))
