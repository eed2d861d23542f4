"""``worker run`` in the background: ``workers list``, and stopping on SIGTERM / SIGINT.

Signals are handled by the worker, the same on every database, so each test runs on one backend
(``on_backend``), split between the two, and the signal in hand is checked once per signal. An idle
worker waits differently (LISTEN/NOTIFY on PostgreSQL, a short poll on SQLite): stopping one is
checked on both.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, wait_for

#: How long the sleepy step sleeps while the tests signal the worker.
NAP = 1.0


def ledger_lines(cli: Cli, name: str = "nap.log") -> list[str]:
    path = cli.cwd / name
    return path.read_text().splitlines() if path.exists() else []


def test_workers_list_shows_a_running_worker_then_a_stopped_one(cli: Cli) -> None:
    worker = cli.start_worker("flows:diamond", "flows:flaky")

    alive = cli.json("workers", "list")
    assert len(alive) == 1, alive
    mine = alive[0]
    assert mine["pid"] == worker.pid
    assert mine["state"] == "alive"
    assert mine["stopped_at"] is None
    assert sorted(mine["workflows"]) == ["cli-diamond@1", "cli-flaky@1"]
    assert str(worker.pid) in cli.ok("workers", "list").stdout

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.stderr

    assert cli.json("workers", "list") == []
    everyone = cli.json("workers", "list", "--all")
    assert [(w["worker_id"], w["state"]) for w in everyone] == [(mine["worker_id"], "stopped")]
    assert everyone[0]["stopped_at"] is not None


@pytest.mark.parametrize(
    ("backend", "stop_signal"),
    [("postgres", signal.SIGTERM), ("sqlite", signal.SIGINT)],
    ids=["postgres-SIGTERM", "sqlite-SIGINT"],
)
def test_a_signal_lets_the_step_in_hand_finish(cli: Cli, stop_signal: signal.Signals) -> None:
    instance_id = cli.submit("flows:sleepy", "--input", f"seconds={NAP}", "--input", "log=nap.log")
    worker = cli.start_worker("flows:sleepy")
    wait_for(lambda: ledger_lines(cli), 20, "the step to start")

    signalled = time.monotonic()
    worker.signal(stop_signal)
    assert worker.wait(timeout=NAP + 15) == 0, worker.stderr
    assert time.monotonic() - signalled > NAP / 4, "the worker did not wait for its step"

    assert f"{stop_signal.name} received" in worker.stderr
    assert f"instance={instance_id} step=nap attempt=1 state=SUCCEEDED" in worker.stderr
    assert "Traceback" not in worker.stderr
    shown = cli.show(instance_id)
    assert shown["status"] == "SUCCEEDED"
    assert shown["result"] == f"slept {NAP}"
    assert [(s["name"], s["state"], s["attempt"]) for s in shown["steps"]] == [("nap", "SUCCEEDED", 1)]
    assert len(ledger_lines(cli)) == 1
    assert cli.json("instances", "list", "--status", "RUNNING") == []
    assert [w["state"] for w in cli.json("workers", "list", "--all")] == ["stopped"]


@on_backend("postgres")
def test_sigterm_stops_every_process_of_a_concurrent_worker(cli: Cli) -> None:
    ids = [
        cli.submit("flows:sleepy", "--input", f"seconds={1.5 * NAP}", "--input", f"log=nap-{n}.log")
        for n in range(2)
    ]
    worker = cli.start("worker", "run", "flows:sleepy", "--concurrency", "2", "--poll-interval", "0.05")
    wait_for(
        lambda: ledger_lines(cli, "nap-0.log") and ledger_lines(cli, "nap-1.log"),
        20,
        "both steps to start",
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=NAP + 15) == 0, worker.stderr

    assert worker.stderr.count("SIGTERM received") == 2, worker.stderr
    assert "Traceback" not in worker.stderr
    for instance_id in ids:
        assert cli.show(instance_id)["status"] == "SUCCEEDED"
    pids = {line for n in range(2) for line in ledger_lines(cli, f"nap-{n}.log")}
    assert len(pids) == 2, "the two steps did not run in two processes"
    workers = cli.json("workers", "list", "--all")
    assert len(workers) == 2
    assert all(w["state"] == "stopped" and w["stopped_at"] for w in workers)
    assert worker.pid not in {w["pid"] for w in workers}


@on_backend("sqlite")
def test_a_second_sigterm_stops_at_once_and_hands_the_step_back(cli: Cli) -> None:
    instance_id = cli.submit(
        "flows:sleepy", "--input", "seconds=60", "--input", "again=0.1", "--input", "log=nap.log"
    )
    worker = cli.start_worker("flows:sleepy")
    wait_for(lambda: ledger_lines(cli), 20, "the step to start")

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("SIGTERM received")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 130, worker.stderr
    assert time.monotonic() - signalled < 30
    assert "Traceback" not in worker.stderr

    handed_back = cli.show(instance_id)
    assert handed_back["status"] == "RUNNING"
    assert [(s["name"], s["state"]) for s in handed_back["steps"]] == [("nap", "QUEUED")]
    assert [w["state"] for w in cli.json("workers", "list", "--all")] == ["stopped"]

    other = cli.burst("flows:sleepy")
    assert f"instance={instance_id} step=nap attempt=2 state=SUCCEEDED" in other.stderr
    done = cli.show(instance_id)
    assert done["status"] == "SUCCEEDED"
    # the interrupted run was handed back (refunded), so one execution counts: the second claim's
    assert [(s["name"], s["state"], s["attempt"]) for s in done["steps"]] == [("nap", "SUCCEEDED", 1)]
    assert len(ledger_lines(cli)) == 2
