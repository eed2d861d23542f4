"""``fuseline schedules``: add, list, pause, resume, remove; mistakes are one line, exit 1, nothing written.

The broker side (firing once per tick, on every backend) is the contract
suite's; here the commands are run as a user runs them, and one worker
process fires an ``--every 1`` schedule.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from fuseline.broker.sql import models
from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error, wait_for
from tests.cli.test_cli_help import help_of, option_help

SUBCOMMANDS = [("schedules",), ("schedules", "add"), ("schedules", "list")] + [
    ("schedules", action) for action in ("pause", "resume", "remove")
]
ADD_OPTIONS = ["--cron", "--every", "--input", "--inputs-json", "--timezone", "--name"]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_help_exits_0_with_an_example(sqlite_cli: Cli, command: tuple[str, ...]) -> None:
    proc = sqlite_cli.run(*command, "--help")

    assert proc.returncode == 0, proc.stderr
    assert "Example: fuseline schedules" in proc.stdout
    assert not (sqlite_cli.cwd / "fuseline.db").exists(), "--help touched the database"


@pytest.mark.parametrize("option", ADD_OPTIONS)
def test_each_option_of_add_shows_an_example(option: str) -> None:
    assert f"e.g. {option} " in option_help(help_of(("schedules", "add")), option)


@on_backend("postgres")
def test_add_list_pause_resume_and_remove(cli: Cli) -> None:
    added = cli.ok(
        "schedules", "add", "flows:diamond", "--cron", "30 2 * * *", "--timezone", "Europe/Oslo",
        "--name", "nightly", "--input", "x=2", "--input", "y=3",
    )  # fmt: skip
    assert "schedule nightly added: cron 30 2 * * * (Europe/Oslo) runs cli-diamond" in added.stdout
    cli.ok("schedules", "add", "flows:diamond", "--every", "15m", "--input", "x=1")

    listed = {s["name"]: s for s in cli.json("schedules", "list")}
    assert sorted(listed) == ["cli-diamond", "nightly"]  # the name defaults to the workflow id
    nightly = listed["nightly"]
    assert (nightly["cron"], nightly["timezone"], nightly["every"]) == ("30 2 * * *", "Europe/Oslo", None)
    assert (nightly["inputs"], nightly["paused"], nightly["last_instance_id"]) == (
        {"x": 2, "y": 3},
        False,
        None,
    )
    next_fire = datetime.fromisoformat(nightly["next_fire_at"])
    assert next_fire.utcoffset() is not None and next_fire.strftime("%M") == "30"
    assert listed["cli-diamond"]["every"] == 900
    table = cli.ok("schedules", "list").stdout
    assert "nightly" in table and "cron 30 2 * * * (Europe/Oslo)" in table and "every 900s" in table

    assert "schedule nightly paused" in cli.ok("schedules", "pause", "nightly").stdout
    assert {s["name"]: s["paused"] for s in cli.json("schedules", "list")} == {
        "cli-diamond": False,
        "nightly": True,
    }
    assert "schedule nightly active; next fire time" in cli.ok("schedules", "resume", "nightly").stdout
    assert "schedule nightly removed" in cli.ok("schedules", "remove", "nightly").stdout
    assert [s["name"] for s in cli.json("schedules", "list")] == ["cli-diamond"]

    gone = cli.run("schedules", "pause", "nightly")
    assert_one_line_error(gone, 1, "unknown schedule 'nightly'")


@on_backend("sqlite")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("flows:diamond", "--cron", "61 * * * *"), "invalid cron expression '61 * * * *': Bad minute"),
        (
            ("flows:diamond", "--cron", "30 2 * * *", "--timezone", "Mars/Olympus"),
            "unknown time zone 'Mars/Olympus'",
        ),
        (("flows:diamond", "--every", "0"), "every must be at least 1 second, not 0"),
        (("flows:diamond", "--every", "soon"), "--every 'soon' is not a whole number of seconds"),
        (("flows:diamond", "--every", "5", "--cron", "* * * * *"), "not both"),
        (("flows:diamond",), "give a cron expression"),
        (("no_such_module:flow", "--every", "5"), "cannot import module 'no_such_module'"),
        (("flows:not_a_workflow", "--every", "5"), "not a fuseline Workflow"),
    ],
    ids=["bad-cron", "bad-tz", "every-0", "every-text", "both", "neither", "no-module", "not-a-workflow"],
)
def test_a_bad_schedule_is_refused_with_one_line_exit_1_and_nothing_written(
    cli: Cli, args: tuple[str, ...], expected: str
) -> None:
    proc = cli.run("schedules", "add", *args)

    assert_one_line_error(proc, 1, expected)
    assert proc.stdout == ""
    assert cli.rows(models.schedules) == []
    assert cli.rows(models.instances) == []


@on_backend("sqlite")
def test_a_name_already_taken_is_refused_and_the_first_schedule_stays(cli: Cli) -> None:
    cli.ok("schedules", "add", "flows:diamond", "--every", "60", "--name", "ping", "--input", "x=1")

    proc = cli.run("schedules", "add", "flows:diamond", "--every", "5", "--name", "ping")

    assert_one_line_error(proc, 1, "a schedule named 'ping' already exists")
    assert [(s["name"], s["every"]) for s in cli.json("schedules", "list")] == [("ping", 60)]


@on_backend("postgres")
def test_a_running_worker_fires_an_every_1_schedule_once_per_tick(cli: Cli) -> None:
    cli.ok("schedules", "add", "flows:diamond", "--every", "1", "--name", "tick", "--input", "x=1")
    worker = cli.start_worker("flows:diamond")

    def fired() -> bool:  # read from the database: a `fuseline` process per poll would take a CPU
        return sum(row.status == "SUCCEEDED" for row in cli.rows(models.instances)) >= 3

    wait_for(fired, 30, "three scheduled instances to succeed", interval=0.3)
    worker.signal()
    assert worker.wait(30) == 0

    instances = cli.json("instances", "list", "--limit", "1000")
    keys = [i["key"] for i in instances]
    assert all(key.startswith("tick@") for key in keys)
    assert len(set(keys)) == len(keys)  # one instance per tick
    schedule = cli.json("schedules", "list")[0]
    assert schedule["last_instance_id"] in {i["instance_id"] for i in instances}
    assert f"tick@{schedule['last_tick']}" in keys
