"""Sleep, concurrency and rate limits, and queues, through real worker processes, as
``instances show`` and ``instances explain`` report them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.cli.conftest import on_backend
from tests.cli.control import event_times, reasons, with_control_flows
from tests.cli.helpers import Cli, wait_for
from tests.cli.test_cli_run import step_lines

pytestmark = on_backend("postgres")

TOLERANCE = timedelta(seconds=0.05)


def explained_as(cli: Cli, instance_id: str, reason: str) -> list[dict] | None:
    """The explanation of the instance if one of its steps has ``reason`` now, else None."""
    explained = cli.json("instances", "explain", instance_id)
    return explained if any(e["reason"] == reason for e in explained) else None


def test_a_sleep_holds_no_worker_and_the_broker_completes_it(cli: Cli) -> None:
    with_control_flows(cli)
    instance_id = cli.submit("control_flows:napping", "--input", "x=4")
    worker = cli.start("worker", "run", "control_flows:napping", "--burst", "--poll-interval", "0.05")

    explained = wait_for(lambda: explained_as(cli, instance_id, "sleeping"), 20, "the sleep to start")
    assert reasons(explained) == [("nap", "QUEUED", "sleeping"), ("after", "PENDING", "waiting")]
    assert explained[0]["detail"].startswith("until ")
    assert "nap" in explained[1]["detail"]
    assert worker.wait(timeout=30) == 0, worker.stderr

    shown = cli.show(instance_id)
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", 5)
    nap = next(s for s in shown["steps"] if s["name"] == "nap")
    assert (nap["state"], nap["worker_id"], nap["result"]) == ("SUCCEEDED", None, None)
    assert event_times(shown, "claimed", "nap") == [], "a worker claimed the sleep"
    (queued,) = event_times(shown, "queued", "nap")
    (done,) = event_times(shown, "succeeded", "nap")
    assert done - queued >= timedelta(seconds=6.0) - TOLERANCE
    assert "step=nap" not in worker.stderr
    assert "step=after" in worker.stderr


def test_a_step_concurrency_limit_holds_the_second_instance_back(cli: Cli) -> None:
    with_control_flows(cli)
    gates = {
        cli.submit("control_flows:exclusive", "--input", f"gate={cli.cwd / name}"): cli.cwd / name
        for name in ("one", "two")
    }
    cli.start_worker("control_flows:exclusive", "--concurrency", "2")

    def started() -> list[str]:
        return [i for i, gate in gates.items() if Path(f"{gate}.waiting").exists()]

    (running,) = wait_for(started, 20, "one instance to start")
    (held,) = set(gates) - {running}
    explained = wait_for(lambda: explained_as(cli, held, "concurrency_limit"), 10, "the limit to show")
    assert reasons(explained) == [("hold", "QUEUED", "concurrency_limit")]
    assert explained[0]["detail"] == f"1/1 running: {running}/hold"
    assert started() == [running], "the limit let a second step run"
    assert reasons(cli.json("instances", "explain", running)) == [("hold", "RUNNING", "running")]

    gates[running].touch()
    wait_for(lambda: len(started()) == 2, 20, "the second instance to start")
    gates[held].touch()
    cli.wait_for_status(gates, "SUCCEEDED", 20, "both to succeed")


def test_a_workflow_concurrency_limit_is_per_key_value(cli: Cli) -> None:
    with_control_flows(cli)
    names = ("ada-1", "ada-2", "bob-1")
    ids = {
        name: cli.submit(
            "control_flows:one_per_customer",
            "--input",
            f"gate={cli.cwd / name}",
            "--input",
            f"customer={name[:3]}",
        )
        for name in names
    }
    cli.start_worker("control_flows:one_per_customer", "--concurrency", "3")

    def started() -> set[str]:
        return {name for name in names if (cli.cwd / f"{name}.waiting").exists()}

    wait_for(lambda: "bob-1" in started() and started() & {"ada-1", "ada-2"}, 20, "two instances to start")
    (ada_running,) = started() - {"bob-1"}
    (ada_held,) = {"ada-1", "ada-2"} - {ada_running}
    explained = wait_for(
        lambda: explained_as(cli, ids[ada_held], "workflow_concurrency_limit"), 10, "the limit to show"
    )
    assert reasons(explained) == [("serve", "QUEUED", "workflow_concurrency_limit")]
    assert explained[0]["detail"].startswith("1/1 instances in progress")
    assert started() == {"bob-1", ada_running}

    (cli.cwd / ada_running).touch()
    wait_for(lambda: ada_held in started(), 20, "the held instance to start")
    for name in names:
        (cli.cwd / name).touch()
    cli.wait_for_status(ids.values(), "SUCCEEDED", 20, "all to succeed")


def test_a_rate_limit_spaces_the_starts(cli: Cli) -> None:
    """control_flows.throttled: RateLimit(1, per=6): the second start waits for the window."""
    with_control_flows(cli)
    first = cli.submit("control_flows:throttled", "--input", "x=1")
    second = cli.submit("control_flows:throttled", "--input", "x=2")
    worker = cli.start("worker", "run", "control_flows:throttled", "--burst", "--poll-interval", "0.05")

    explained = wait_for(lambda: explained_as(cli, second, "rate_limited"), 20, "the rate limit to show")
    assert explained[0]["detail"].startswith("until ")
    assert worker.wait(timeout=30) == 0, worker.stderr

    (one,) = event_times(cli.show(first), "claimed", "tick")
    (two,) = event_times(cli.show(second), "claimed", "tick")
    assert two - one >= timedelta(seconds=6) - TOLERANCE


def test_queues_split_the_steps_between_workers(cli: Cli) -> None:
    with_control_flows(cli)
    cpu = cli.start_worker("control_flows:gpu_then_cpu", "--queue", "default")
    instance_id = cli.submit("control_flows:gpu_then_cpu", "--input", "image=cat")

    explained = wait_for(lambda: explained_as(cli, instance_id, "no_worker"), 10, "no worker for gpu")
    assert reasons(explained) == [("render", "QUEUED", "no_worker"), ("publish", "PENDING", "waiting")]
    assert "gpu" in explained[0]["detail"]
    assert "queue default" in cpu.stderr

    gpu = cli.burst("control_flows:gpu_then_cpu", "--queue", "gpu", timeout=60)

    assert [line["step"] for line in step_lines(gpu.stderr)] == ["render"], gpu.stderr
    wait_for(lambda: "step=publish" in cpu.stderr, 10, "the default worker to publish")
    assert "step=render" not in cpu.stderr
    shown = cli.show(instance_id)
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", "published cat.thumb")


def test_a_queue_no_step_uses_gets_a_warning(cli: Cli) -> None:
    with_control_flows(cli)

    worker = cli.burst("control_flows:echo", "--queue", "gpu", "--queue", "default")

    warnings = [line for line in worker.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, worker.stderr
    assert "no step of these workflows is in queue gpu (their queues: default)" in warnings[0]
    assert "queues gpu, default" in worker.stderr
