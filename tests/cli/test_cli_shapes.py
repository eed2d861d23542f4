"""Shapes through the CLI (issue 12): the README's fan-out and approval examples on real
worker processes, ``instances signal``, and how ``instances show`` and ``list`` present them."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error

pytestmark = on_backend("postgres")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _with_examples(cli: Cli) -> None:
    for name in ("fan_out.py", "approval.py"):
        shutil.copy(EXAMPLES / name, cli.cwd / name)


def test_a_map_and_a_subworkflow_run_on_workers_and_show_their_items_and_links(cli: Cli) -> None:
    _with_examples(cli)
    parent_id = cli.submit("fan_out:nightly", "--input", "count=12")

    burst = cli.burst("fan_out:nightly")
    assert burst.returncode == 0, burst.stderr

    parent = cli.show(parent_id)
    assert parent["status"] == "SUCCEEDED", parent
    assert parent["result"].startswith("12 files, ")
    (child_id,) = parent["children"]
    child = cli.show(child_id)
    assert (child["parent_instance_id"], child["parent_step"]) == (parent_id, "run_fan_out")
    items = [s["name"] for s in child["steps"] if s["name"].startswith("count_rows[")]
    assert items == [f"count_rows[{i}]" for i in range(12)]
    assert (child["steps_done"], child["steps_total"]) == (3 + 12, 3 + 12)

    shown = cli.ok("instances", "show", child_id).stdout
    assert f"parent: {parent_id} (step run_fan_out)" in shown and "count_rows[11]" in shown
    assert f"child: {child_id} (step run_fan_out)" in cli.ok("instances", "show", parent_id).stdout
    listed = cli.ok("instances", "list").stdout
    assert "15/15" in listed


def test_a_signal_moves_a_waiting_instance_on_and_a_second_one_is_refused(cli: Cli) -> None:
    _with_examples(cli)
    instance_id = cli.submit("approval:approval", "--input", "title=Q3")
    assert cli.burst("approval:approval").returncode == 0
    waiting = cli.ok("instances", "explain", instance_id).stdout
    assert "waiting for signal 'approved'" in waiting

    sent = cli.ok("instances", "signal", instance_id, "approved", "--data", '{"by": "ana"}')
    assert f"signal 'approved' sent to instance {instance_id}" in sent.stdout
    again = cli.run("instances", "signal", instance_id, "approved", "--data", '{"by": "bob"}')
    assert_one_line_error(again, 1, "already received signal 'approved'")
    assert cli.burst("approval:approval").returncode == 0

    done = cli.show(instance_id)
    assert (done["status"], done["result"]) == ("SUCCEEDED", "published 'Q3', approved by ana")
    finished = cli.run("instances", "signal", instance_id, "other")
    assert_one_line_error(finished, 1, "SUCCEEDED; signals reach only RUNNING instances")


def test_bad_signals_are_one_line_errors(cli: Cli) -> None:
    _with_examples(cli)
    instance_id = cli.submit("approval:approval", "--input", "title=Q3")

    unknown = cli.run("instances", "signal", "5f0c1a7e-0000-4000-8000-000000000000", "approved")
    assert_one_line_error(unknown, 1, "5f0c1a7e-0000-4000-8000-000000000000")
    not_json = cli.run("instances", "signal", instance_id, "approved", "--data", "{nope")
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr and "Traceback" not in not_json.stderr
    assert cli.show(instance_id)["status"] == "RUNNING"
