"""``instances explain``: why each unfinished step is where it is, as a table and as JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import on_backend
from tests.cli.control import reasons
from tests.cli.helpers import Cli, assert_one_line_error, wait_for

pytestmark = on_backend("postgres")

UNKNOWN_ID = "0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21"


def test_a_running_step_and_a_waiting_one(cli: Cli) -> None:
    gate = cli.cwd / "gate"
    instance_id = cli.submit("flows:gated", "--input", f"gate={gate}")

    before = cli.json("instances", "explain", instance_id)
    assert reasons(before) == [
        ("wait_for_gate", "QUEUED", "no_worker"),
        ("after_gate", "PENDING", "waiting"),
    ]
    assert "cli-gated" in before[0]["detail"]
    assert all(set(e) == {"step", "state", "reason", "detail"} for e in before)

    cli.start_worker("flows:gated", "--burst")
    wait_for(Path(f"{gate}.waiting").exists, 20, "the first step to run")
    (worker,) = cli.json("workers", "list")

    explained = cli.json("instances", "explain", instance_id)
    assert reasons(explained) == [
        ("wait_for_gate", "RUNNING", "running"),
        ("after_gate", "PENDING", "waiting"),
    ]
    running, waiting = explained
    assert f"on worker {worker['worker_id']}" in running["detail"]
    assert worker["host"] in running["detail"] and "lease until" in running["detail"]
    assert waiting["detail"] == "waiting for wait_for_gate"

    table = cli.ok("instances", "explain", instance_id).stdout
    for text in ("step", "reason", "detail", "wait_for_gate", "RUNNING", "running", worker["worker_id"]):
        assert text in table, text
    assert "waiting for wait_for_gate" in table

    gate.touch()
    cli.wait_for_status([instance_id], "SUCCEEDED", 30, "the instance to succeed")
    finished = cli.ok("instances", "explain", instance_id)
    assert finished.stdout.strip() == f"instance {instance_id} is SUCCEEDED: no step is waiting or running"
    assert cli.json("instances", "explain", instance_id) == []


def test_a_step_queued_behind_a_busy_worker(cli: Cli) -> None:
    busy, queued = cli.cwd / "busy", cli.cwd / "queued"
    first = cli.submit("flows:gated", "--input", f"gate={busy}")
    cli.start_worker("flows:gated")
    wait_for(Path(f"{busy}.waiting").exists, 20, "the first instance to run")
    second = cli.submit("flows:gated", "--input", f"gate={queued}")

    assert reasons(cli.json("instances", "explain", second)) == [
        ("wait_for_gate", "QUEUED", "queued"),
        ("after_gate", "PENDING", "waiting"),
    ]
    assert reasons(cli.json("instances", "explain", first))[0] == ("wait_for_gate", "RUNNING", "running")
    busy.touch()
    queued.touch()
    cli.wait_for_status([first, second], "SUCCEEDED", 30, "the instances to succeed")


@pytest.mark.parametrize("instance_id", [UNKNOWN_ID, "not-a-uuid"])
@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["table", "json"])
def test_an_unknown_instance_exits_1(cli: Cli, instance_id: str, json_flag: tuple[str, ...]) -> None:
    proc = cli.run("instances", "explain", instance_id, *json_flag)

    assert_one_line_error(proc, 1, "unknown instance", instance_id)
    assert proc.stdout == ""
