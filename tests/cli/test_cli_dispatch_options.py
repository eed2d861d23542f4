"""``submit --delay / --at / --key / --priority`` end to end, and the mistakes they refuse."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from fuseline.broker.sql.models import instances, workers
from tests.cli.conftest import on_backend
from tests.cli.control import event_times, reasons, with_control_flows
from tests.cli.helpers import Cli, assert_one_line_error
from tests.cli.test_cli_run import step_lines

pytestmark = on_backend("sqlite")

#: Clock differences between the test process and the database server it shares the host with.
TOLERANCE = timedelta(seconds=0.1)
#: Long enough for two CLI processes to start on a loaded 2-core box before the step is due.
DELAY_SECONDS = 8


def test_delay_and_at_hold_the_first_step_back_until_their_time(cli: Cli) -> None:
    """``--delay`` and ``--at`` (a time in any zone): the first step is QUEUED, explained as
    delayed, and claimed only from its time. The two instances wait out their time together,
    for one burst worker: the wait is most of the test."""
    with_control_flows(cli)
    submitted = time.monotonic()
    delayed = cli.submit("control_flows:echo", "--input", "x=7", "--delay", str(DELAY_SECONDS))

    explained = cli.json("instances", "explain", delayed)
    assert time.monotonic() - submitted < DELAY_SECONDS, "too slow to see the delay"
    assert reasons(explained) == [("echo", "QUEUED", "delayed")]
    assert explained[0]["detail"].startswith("until ")

    zone = timezone(timedelta(hours=-5))
    start = datetime.now(zone) + timedelta(seconds=DELAY_SECONDS)
    at = cli.submit("control_flows:echo", "--input", "x=3", "--at", start.isoformat())

    explained = cli.json("instances", "explain", at)
    assert datetime.now(zone) < start, "too slow to see the delay"
    assert reasons(explained) == [("echo", "QUEUED", "delayed")]

    cli.burst("control_flows:echo")

    shown = cli.show(delayed)
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", 7)
    (dispatched,) = event_times(shown, "dispatched")
    (claimed,) = event_times(shown, "claimed", "echo")
    assert claimed - dispatched >= timedelta(seconds=DELAY_SECONDS) - TOLERANCE

    shown = cli.show(at)
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", 3)
    (claimed,) = event_times(shown, "claimed", "echo")
    assert claimed >= start - TOLERANCE


def test_at_in_the_past_starts_at_once(cli: Cli) -> None:
    with_control_flows(cli)
    instance_id = cli.submit("control_flows:echo", "--input", "x=1", "--at", "2020-01-01T00:00:00Z")

    assert [e["reason"] for e in cli.json("instances", "explain", instance_id)] != ["delayed"]
    cli.burst("control_flows:echo")
    assert cli.show(instance_id)["status"] == "SUCCEEDED"


def test_a_key_names_one_instance_of_a_workflow(cli: Cli) -> None:
    with_control_flows(cli)
    first = cli.submit("control_flows:echo", "--input", "x=1", "--key", "order-1")

    again = cli.submit("control_flows:echo", "--inputs-json", '{"x": 1}', "--key", "order-1")
    assert again == first

    refused = cli.run("submit", "control_flows:echo", "--input", "x=2", "--key", "order-1")
    assert_one_line_error(refused, 1, "'order-1'", first)
    assert refused.stdout == ""

    other_workflow = cli.submit(
        "control_flows:wobbly", "--input", "ledger=w.log", "--input", "failures=0", "--key", "order-1"
    )
    unkeyed = cli.submit("control_flows:echo", "--input", "x=1")
    assert len({first, other_workflow, unkeyed}) == 3

    listed = {i["instance_id"]: i for i in cli.json("instances", "list")}
    assert set(listed) == {first, other_workflow, unkeyed}
    assert (listed[first]["key"], listed[first]["priority"]) == ("order-1", 0)
    assert listed[other_workflow]["key"] == "order-1"
    assert listed[unkeyed]["key"] is None
    assert cli.show(first)["key"] == "order-1"
    assert 'key: "order-1"' in cli.ok("instances", "show", first).stdout

    cli.burst("control_flows:echo", "control_flows:wobbly")
    assert cli.submit("control_flows:echo", "--input", "x=1", "--key", "order-1") == first, (
        "a finished instance still owns its key"
    )
    assert len(cli.json("instances", "list")) == 3


def test_higher_priorities_run_first_and_successors_inherit_them(cli: Cli) -> None:
    low = cli.submit("flows:diamond", "--input", "x=1", "--priority", "-3")
    normal = cli.submit("flows:diamond", "--input", "x=2")
    high = cli.submit("flows:diamond", "--input", "x=3", "--priority", "5")

    worker = cli.burst("flows:diamond")

    order = [line["instance"] for line in step_lines(worker.stderr)]
    assert order == [high] * 4 + [normal] * 4 + [low] * 4, worker.stderr
    listed = {i["instance_id"]: i["priority"] for i in cli.json("instances", "list")}
    assert listed == {low: -3, normal: 0, high: 5}
    shown = cli.show(high)
    assert (shown["priority"], shown["key"]) == (5, None)
    assert "priority: 5" in cli.ok("instances", "show", high).stdout


SUBMIT_MISTAKES = [
    (("--delay", "-1"), "--delay", "0 or more seconds"),
    (("--delay", "nan"), "--delay", "0 or more seconds"),
    (("--at", "2026-12-01T02:30:00"), "--at", "has no time zone"),
    (("--at", "tomorrow"), "--at", "not an ISO 8601 time"),
    (("--delay", "5", "--at", "2026-12-01T02:30:00+00:00"), "--delay / --at", "not both"),
    (("--key", "k" * 201), "--key", "201 characters long; the limit is 200"),
    (("--key", ""), "--key", "non-empty"),
    (("--key", "a\tb"), "--key", "control characters"),
    (("--priority", "high"), "--priority", "valid integer"),
    (("--priority", "1.5"), "--priority", "valid integer"),
    (("--priority", str(2**31)), "--priority", "between"),
]


@pytest.mark.parametrize(
    ("args", "option", "message"), SUBMIT_MISTAKES, ids=[" ".join(a)[:40] for a, _, _ in SUBMIT_MISTAKES]
)
def test_bad_dispatch_options_are_usage_errors_and_write_nothing(
    cli: Cli, args: tuple[str, ...], option: str, message: str
) -> None:
    with_control_flows(cli)

    proc = cli.run("submit", "control_flows:echo", "--input", "x=1", *args)

    line = assert_one_line_error(proc, 2, option, message)
    assert line.startswith("Error: Invalid value"), line
    assert proc.stdout == ""
    if cli.backend == "sqlite":
        assert not (cli.cwd / "fuseline.db").exists(), "a usage mistake touched the database"
    assert cli.rows(instances) == []


@pytest.mark.parametrize("queue", ["g pu", "", "x" * 101, "gpu/1"])
def test_a_bad_queue_name_is_a_usage_error(cli: Cli, queue: str) -> None:
    with_control_flows(cli)

    proc = cli.run("worker", "run", "control_flows:echo", "--queue", "default", "--queue", queue, "--burst")

    assert_one_line_error(proc, 2, "--queue", "invalid queue name")
    assert proc.stdout == ""
    if cli.backend == "sqlite":
        assert not (cli.cwd / "fuseline.db").exists(), "a usage mistake touched the database"
    assert cli.rows(workers) == []
