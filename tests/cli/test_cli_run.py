"""``submit``, ``worker run --burst``, ``submit --wait`` and the instance listings.

These commands reach the database only through the broker, which the contract suite runs on
PostgreSQL and SQLite, so each test runs on one backend (``on_backend``), the tests split between
the two; a test that checks something of its backend keeps it (the default file of SQLite), and
the JSON round trip of inputs (JSONB on PostgreSQL, text on SQLite) runs on both.
"""

from __future__ import annotations

import re

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from tests.cli import flows
from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error, is_uuid

LOG_LINE = re.compile(
    r"instance=(?P<instance>\S+) step=(?P<step>\S+) attempt=(?P<attempt>\d+) "
    r"state=(?P<state>[A-Z]+) duration=\d+\.\d+s"
)


def step_lines(stderr: str) -> list[dict[str, str]]:
    return [m.groupdict() for m in LOG_LINE.finditer(stderr)]


@on_backend("sqlite")  # checks that the default fuseline.db appears
def test_submit_then_burst_worker_then_list_and_show(cli: Cli) -> None:
    submitted = cli.ok("submit", "flows:diamond", "--input", "x=3", "--input", "y=4")
    instance_id = submitted.stdout.splitlines()[0]
    assert is_uuid(instance_id)
    assert submitted.stdout == instance_id + "\n"
    if cli.backend == "sqlite":
        assert (cli.cwd / "fuseline.db").is_file()

    worker = cli.burst("flows:diamond")

    lines = step_lines(worker.stderr)
    assert sorted(line["step"] for line in lines) == ["a", "b", "c", "d"], worker.stderr
    assert all(line["instance"] == instance_id for line in lines)
    assert all(line["attempt"] == "1" and line["state"] == "SUCCEEDED" for line in lines)
    assert worker.stdout == ""

    listed = cli.json("instances", "list")
    assert len(listed) == 1
    item = listed[0]
    assert item["instance_id"] == instance_id
    assert item["workflow_id"] == "cli-diamond"
    assert item["version"] == "1"
    assert item["status"] == "SUCCEEDED"
    assert item["created_at"] and item["finished_at"]
    assert item["finished_at"] >= item["created_at"]

    shown = cli.show(instance_id)
    assert shown["status"] == "SUCCEEDED"
    assert shown["inputs"] == {"x": 3, "y": 4}
    assert shown["result"] == (3 + 4) * 2 + (3 + 4 + 1)
    steps = {s["name"]: s for s in shown["steps"]}
    assert set(steps) == {"a", "b", "c", "d"}
    assert all(s["state"] == "SUCCEEDED" and s["attempt"] == 1 for s in steps.values())
    assert steps["b"]["result"] == 14 and steps["c"]["result"] == 8
    assert shown["events"], "the history of the instance is empty"
    assert all({"at", "kind", "step"} <= set(e) for e in shown["events"])

    table = cli.ok("instances", "list").stdout
    assert instance_id in table and "SUCCEEDED" in table and "cli-diamond@1" in table

    flaky = cli.submit("flows:flaky", "--input", f"marker={cli.cwd / 'absent'}")
    assert [i["instance_id"] for i in cli.json("instances", "list", "--limit", "1")] == [flaky]
    succeeded = cli.json("instances", "list", "--status", "succeeded", "--workflow", "cli-diamond")
    assert [i["instance_id"] for i in succeeded] == [instance_id]
    assert cli.json("instances", "list", "--status", "SUCCEEDED", "--workflow", "cli-flaky") == []


@on_backend("postgres")  # the idle worker woken by the submit's NOTIFY
def test_submit_wait_with_a_worker_in_the_background(cli: Cli) -> None:
    cli.start_worker("flows:diamond", "flows:flaky")
    marker = cli.cwd / "marker"
    marker.touch()

    waited = cli.run("submit", "flows:diamond", "--input", "x=3", "--input", "y=4", "--wait", timeout=60)
    assert waited.returncode == 0, waited
    instance_id, result = waited.stdout.splitlines()
    assert is_uuid(instance_id)
    assert result == "22"
    assert f"instance {instance_id} SUCCEEDED" in waited.stderr

    failed = cli.run("submit", "flows:flaky", "--input", f"marker={marker}", "--wait", "--timeout", "30")
    failed_id = failed.stdout.splitlines()[0]
    assert is_uuid(failed_id)
    assert len(failed.stdout.splitlines()) == 1, failed.stdout
    assert_one_line_error(failed, 1, failed_id, "FAILED", f"marker file is present [{marker}]")


@on_backend("sqlite")
def test_submit_wait_gives_up_after_timeout(cli: Cli) -> None:
    waited = cli.run("submit", "flows:diamond", "--input", "x=1", "--wait", "--timeout", "0.5")

    instance_id = waited.stdout.splitlines()[0]
    assert_one_line_error(waited, 1, "timed out", instance_id, "RUNNING")
    assert cli.show(instance_id)["status"] == "RUNNING"


def test_input_values_are_json_when_they_parse(cli: Cli) -> None:
    instance_id = cli.submit(
        "flows:diamond",
        "--input", "x=1",
        "--input", "n=3",
        "--input", "name=abc",
        "--input", 'tags=["a","b"]',
        "--input", "ratio=0.5",
        "--input", "flag=true",
        "--input", "nothing=null",
        "--input", 'quoted="7"',
        "--input", "empty=",
        "--input", "eq=a=b",
        "-i", 'obj={"k": [1, 2]}',
    )  # fmt: skip

    inputs = cli.show(instance_id)["inputs"]
    assert inputs == {
        "x": 1,
        "n": 3,
        "name": "abc",
        "tags": ["a", "b"],
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "quoted": "7",
        "empty": "",
        "eq": "a=b",
        "obj": {"k": [1, 2]},
    }
    assert type(inputs["n"]) is int


@on_backend("postgres")
def test_inputs_json_combined_with_input_options(cli: Cli) -> None:
    instance_id = cli.submit(
        "flows:diamond", "--inputs-json", '{"x": 1, "y": 2, "label": "from json"}', "--input", "y=5"
    )

    shown = cli.show(instance_id)
    assert shown["inputs"] == {"x": 1, "y": 5, "label": "from json"}
    cli.burst("flows:diamond")
    assert cli.show(instance_id)["result"] == (1 + 5) * 2 + (1 + 5 + 1)


@on_backend("sqlite")
def test_changed_definition_under_the_same_id_and_version_is_refused(cli: Cli) -> None:
    cli.submit("flows:diamond", "--input", "x=1")

    refused = cli.run("submit", "flows:diamond_changed", "--input", "x=1")
    assert_one_line_error(refused, 1, "cli-diamond", "different definition")
    assert refused.stdout == ""
    worker = cli.run("worker", "run", "flows:diamond_changed", "--burst")
    assert_one_line_error(worker, 1, "cli-diamond", "different definition")


@on_backend("sqlite")
def test_markup_characters_in_names_and_errors_are_shown_verbatim(cli: Cli) -> None:
    marker = cli.cwd / "marker"
    marker.touch()
    instance_id = cli.submit("flows:odd_name", "--input", "x=5")
    failed = cli.submit("flows:flaky", "--input", f"marker={marker}")
    cli.burst("flows:odd_name", "flows:flaky")

    table = cli.ok("instances", "list").stdout
    assert "cli-[/odd] [bold]@1" in table
    detail = cli.ok("instances", "show", instance_id).stdout
    assert "cli-[/odd] [bold]@1" in detail and "result: 5" in detail
    detail = cli.ok("instances", "show", failed).stdout
    assert f"marker file is present [{marker}]" in detail


@on_backend("postgres")
def test_database_url_option_wins_over_the_environment(cli: Cli) -> None:
    instance_id = cli.submit("flows:diamond", "--input", "x=1")
    bogus = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    option = Cli(cli.backend, cli.cwd, cli.url, via="option", extra_env={"FUSELINE_DATABASE_URL": bogus})

    listed = option.json("instances", "list")
    assert [i["instance_id"] for i in listed] == [instance_id]

    from_env = Cli(cli.backend, cli.cwd, bogus)
    assert_one_line_error(from_env.run("instances", "list"), 1, "127.0.0.1:1")


@on_backend("postgres")  # the contract suite runs prefetch on every broker
def test_prefetching_workers_run_every_step_once(cli: Cli) -> None:
    """``--prefetch 3`` with two processes: steps claimed three at a time, reports sent in
    batches, and still every step of every instance runs once and the results are right.

    The test dispatches and reads the instances through a broker of its own: a ``submit`` and
    a ``show`` process for each of them took most of its time, and those have tests of their own.
    """
    assert cli.url is not None
    broker = SqlBroker(cli.url)
    try:
        ids = [flows.diamond.dispatch(broker, {"x": n, "y": 1}) for n in range(6)]

        worker = cli.burst("flows:diamond", "--prefetch", "3", "--concurrency", "2")

        lines = step_lines(worker.stderr)
        ran = sorted((line["instance"], line["step"]) for line in lines)
        assert ran == sorted((i, s) for i in ids for s in "abcd"), worker.stderr
        assert all(line["attempt"] == "1" and line["state"] == "SUCCEEDED" for line in lines)
        for n, instance_id in enumerate(ids):
            info = broker.get_instance(instance_id)
            assert (info.status, info.result) == (Status.SUCCEEDED, (n + 1) * 2 + (n + 1 + 1))
    finally:
        broker.close()


@on_backend("sqlite")
def test_prefetch_below_one_is_refused(cli: Cli) -> None:
    refused = cli.run("worker", "run", "flows:diamond", "--prefetch", "0")
    assert refused.returncode == 2, refused.stderr
    assert "--prefetch" in refused.stderr and "Traceback" not in refused.stderr
