"""Durable retries through the console script: the broker schedules them, ``instances show`` lists
each attempt's error, and the retries do not use up the lost-worker budget."""

from __future__ import annotations

from datetime import timedelta

from tests.cli.conftest import on_backend
from tests.cli.control import event_times, with_control_flows
from tests.cli.helpers import Cli

pytestmark = on_backend("postgres")

#: control_flows.wobbly: RetryPolicy(max_retries=2, wait=0.3), backoff 2.0 (waits 0.3 s, then 0.6 s).
WAITS = [timedelta(seconds=0.3), timedelta(seconds=0.6)]
TOLERANCE = timedelta(seconds=0.05)


def submit_wobbly(cli: Cli, failures: int) -> str:
    with_control_flows(cli)
    return cli.submit(
        "control_flows:wobbly",
        "--input",
        f"ledger={cli.cwd / 'wobbly.log'}",
        "--input",
        f"failures={failures}",
    )


def runs(cli: Cli) -> int:
    return (cli.cwd / "wobbly.log").read_text().count("\n")


def test_a_step_that_fails_twice_is_retried_by_the_broker_and_succeeds(cli: Cli) -> None:
    instance_id = submit_wobbly(cli, failures=2)

    cli.burst("control_flows:wobbly")

    shown = cli.show(instance_id)
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", "steady after 3 runs")
    assert runs(cli) == 3, "the step ran more often than 1 + 2 retries"
    (step,) = shown["steps"]
    assert (step["state"], step["attempt"], step["retries"], step["max_attempts"]) == ("SUCCEEDED", 3, 2, 3)
    assert step["error"] is None

    errors = shown["attempt_errors"]
    assert [(e["step"], e["attempt"], e["then"]) for e in errors] == [
        ("wobbly", 1, "retry scheduled"),
        ("wobbly", 2, "retry scheduled"),
    ]
    assert "wobbly run 1 of 2 planned failures" in errors[0]["error"]
    assert "wobbly run 2 of 2 planned failures" in errors[1]["error"]

    # the broker held the step back for the policy's delay before handing it out again
    scheduled = event_times(shown, "retry_scheduled", "wobbly")
    claimed = event_times(shown, "claimed", "wobbly")
    assert len(scheduled) == 2 and len(claimed) == 3
    for wait, failed_at, claimed_again in zip(WAITS, scheduled, claimed[1:], strict=True):
        assert claimed_again - failed_at >= wait - TOLERANCE

    table = cli.ok("instances", "show", instance_id).stdout
    assert "retries" in table and "errors of each attempt" in table
    assert "wobbly run 1 of 2 planned failures [wobbly.log]" in table
    assert "retry scheduled" in table
    # three executions, of the 3 + 2 that the lost-worker limit allows after two policy retries
    assert "3/5" in table


def test_past_its_retries_the_step_fails_and_every_attempt_error_is_listed(cli: Cli) -> None:
    instance_id = submit_wobbly(cli, failures=5)

    cli.burst("control_flows:wobbly")

    shown = cli.show(instance_id)
    assert shown["status"] == "FAILED"
    assert runs(cli) == 3, "a RetryPolicy(max_retries=2) step runs 3 times in all"
    (step,) = shown["steps"]
    assert (step["state"], step["attempt"], step["retries"]) == ("FAILED", 3, 2)
    assert "wobbly run 3 of 5 planned failures" in step["error"]
    assert [(e["attempt"], e["then"]) for e in shown["attempt_errors"]] == [
        (1, "retry scheduled"),
        (2, "retry scheduled"),
        (3, "failed"),
    ]
    assert "wobbly run 3 of 5" in shown["error"]

    table = cli.ok("instances", "show", instance_id).stdout
    for n in (1, 2, 3):
        assert f"wobbly run {n} of 5 planned failures" in table
    assert cli.json("instances", "explain", instance_id) == []
