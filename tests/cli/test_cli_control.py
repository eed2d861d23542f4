"""``instances cancel`` and ``instances retry`` on instances that real workers run."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error, wait_for

pytestmark = on_backend("sqlite")


def test_cancel_a_running_instance(cli: Cli) -> None:
    gate = cli.cwd / "gate"
    instance_id = cli.submit("flows:gated", "--input", f"gate={gate}")
    worker = cli.start_worker("flows:gated", "--burst")

    wait_for(Path(f"{gate}.waiting").exists, 20, "the first step to run")
    running = {s["name"]: s["state"] for s in cli.show(instance_id)["steps"]}
    assert running == {"wait_for_gate": "RUNNING", "after_gate": "PENDING"}

    cancelled = cli.ok("instances", "cancel", instance_id)
    assert instance_id in cancelled.stdout and "CANCELLED" in cancelled.stdout
    shown = cli.show(instance_id)
    assert shown["status"] == "CANCELLED"
    assert {s["name"]: s["state"] for s in shown["steps"]} == {
        "wait_for_gate": "CANCELLED",
        "after_gate": "CANCELLED",
    }

    again = cli.run("instances", "cancel", instance_id)
    assert_one_line_error(again, 1, instance_id, "CANCELLED")

    # The step in hand finishes; its late report is refused and the burst worker ends.
    gate.touch()
    assert worker.wait(timeout=30) == 0, worker.stderr
    assert "Traceback" not in worker.stderr
    final = cli.show(instance_id)
    assert final["status"] == "CANCELLED"
    assert {s["state"] for s in final["steps"]} == {"CANCELLED"}


def test_retry_a_failed_instance(cli: Cli) -> None:
    marker = cli.cwd / "marker"
    marker.touch()
    instance_id = cli.submit("flows:flaky", "--input", f"marker={marker}")

    first = cli.burst("flows:flaky")
    assert f"instance={instance_id} step=fragile attempt=1 state=FAILED" in first.stderr
    failed = cli.show(instance_id)
    assert failed["status"] == "FAILED"
    assert "marker file is present" in failed["error"]
    states = {s["name"]: s["state"] for s in failed["steps"]}
    assert states == {"prepare": "SUCCEEDED", "fragile": "FAILED"}

    marker.unlink()
    retried = cli.ok("instances", "retry", instance_id)
    assert f"instance {instance_id} RUNNING again; queued: fragile" in retried.stdout

    second = cli.burst("flows:flaky")
    assert f"instance={instance_id} step=fragile" in second.stderr
    assert "step=prepare" not in second.stderr
    done = cli.show(instance_id)
    assert done["status"] == "SUCCEEDED"
    assert done["result"] == "prepared and done"
    assert done["error"] is None
    assert any(e["kind"] == "retried" for e in done["events"])

    again = cli.run("instances", "retry", instance_id)
    assert_one_line_error(again, 1, instance_id, "SUCCEEDED")
