"""``fuseline worker run --slots N``: one process running N steps at once, end to end.

The steps come from a module the test writes beside ``flows.py``: each one
marks its arrival with a file and waits until N have arrived, so a worker
running fewer than N at once leaves them waiting until they fail.
"""

from __future__ import annotations

import signal
from pathlib import Path

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances, steps
from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error, wait_for

SLOT_FLOWS = '''
import asyncio
import time
from pathlib import Path

from fuseline import AsyncStep, Step, Workflow

#: Longer than any scheduling delay; a worker without enough slots fails the steps here.
PATIENCE = 30.0


async def arrive(folder: str, n: int, parties: int) -> None:
    """Mark this step's arrival and wait until ``parties`` steps arrived."""
    here = Path(folder)
    here.mkdir(exist_ok=True)
    (here / str(n)).touch()
    deadline = time.monotonic() + PATIENCE
    while len(list(here.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(here.iterdir()))} of {parties} steps ran at once")
        await asyncio.sleep(0.01)


class Meet(AsyncStep):
    async def run_step(self, folder: str, n: int, parties: int) -> int:
        await arrive(folder, n, parties)
        return n


class Hold(Step):
    """A plain step (run on a thread): marks its arrival, then waits for the gate file."""

    def run_step(self, folder: str, n: int, gate: str) -> int:
        Path(folder).mkdir(exist_ok=True)
        (Path(folder) / str(n)).touch()
        deadline = time.monotonic() + PATIENCE
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the gate never opened")
            time.sleep(0.01)
        return n


meet = Workflow([Meet(name="meet")], workflow_id="cli-slots-meet", version="1")
hold = Workflow([Hold(name="hold")], workflow_id="cli-slots-hold", version="1")
'''


def write_flows(cli: Cli) -> None:
    (cli.cwd / "slot_flows.py").write_text(SLOT_FLOWS)


def test_a_worker_with_4_slots_runs_4_steps_at_once(cli: Cli) -> None:
    """Eight async steps that each wait until four have arrived: a burst worker with --slots 4
    runs them in two rounds of four, all SUCCEEDED on their first attempt."""
    write_flows(cli)
    ids = [
        cli.submit(
            "slot_flows:meet",
            "--input",
            f"folder={cli.cwd / f'round{n // 4}'}",
            "--input",
            f"n={n}",
            "--input",
            "parties=4",
        )
        for n in range(8)
    ]
    worker = cli.ok(
        "worker", "run", "slot_flows:meet", "--slots", "4", "--burst", "--poll-interval", "0.05", timeout=120
    )
    assert "of 4 slots" in worker.stderr
    shown = cli.show(ids[5])
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", 5), shown
    # The rest read from the database itself (a ``fuseline`` process per instance costs seconds).
    stored = {str(row.id): row for row in cli.rows(instances)}
    assert [stored[i].status for i in ids] == ["SUCCEEDED"] * 8, worker.stderr
    first_tries = [row for row in cli.rows(steps) if row.state == "SUCCEEDED" and row.attempt == 1]
    assert len(first_tries) == 8
    broker = SqlBroker(str(cli.database_url()))
    try:  # each success once in each history (its row holds it: no event of its own)
        accepted = {i: [e.kind for e in broker.instance_events(i)].count("succeeded") for i in ids}
    finally:
        broker.close()
    assert accepted == dict.fromkeys(ids, 1)


@on_backend("postgres")
def test_sigterm_finishes_every_running_slot_then_exits_0(cli: Cli) -> None:
    """Three plain steps held on threads when SIGTERM arrives: the worker waits for all three,
    reports them, claims nothing more (the fourth instance stays queued) and exits 0."""
    write_flows(cli)
    arrived, gate = cli.cwd / "arrived", cli.cwd / "gate"
    ids = [
        cli.submit(
            "slot_flows:hold",
            "--input",
            f"folder={arrived}",
            "--input",
            f"n={n}",
            "--input",
            f"gate={gate}",
        )
        for n in range(4)
    ]
    worker = cli.start_worker("slot_flows:hold", "--slots", "3")
    wait_for(lambda: arrived.is_dir() and len(list(arrived.iterdir())) == 3, 30, "three steps running")
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("SIGTERM received")
    Path(gate).touch()
    assert worker.wait(60) == 0, worker.stderr
    statuses = sorted(cli.show(i)["status"] for i in ids)
    assert statuses == ["RUNNING", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"], worker.stderr
    assert len(list(arrived.iterdir())) == 3
    assert "Traceback" not in worker.stderr


@on_backend("sqlite")
def test_slots_below_one_is_a_one_line_usage_error(cli: Cli) -> None:
    write_flows(cli)
    proc = cli.run("worker", "run", "slot_flows:meet", "--slots", "0")
    assert_one_line_error(proc, 2, "--slots")
    assert not (cli.cwd / "fuseline.db").exists(), "a refused option touched the database"


@on_backend("sqlite")
def test_prefetch_beside_slots_is_a_one_line_usage_error(cli: Cli) -> None:
    write_flows(cli)
    proc = cli.run("worker", "run", "slot_flows:meet", "--slots", "4", "--prefetch", "10")
    assert_one_line_error(proc, 2, "--prefetch", "--slots")


@on_backend("sqlite")
def test_help_explains_slots(cli: Cli) -> None:
    text = cli.ok("worker", "run", "--help").stdout
    assert "--slots" in text
    assert "one event loop" in text and "threads" in text


@on_backend("sqlite")
def test_a_second_sigterm_stops_at_once_and_hands_every_slots_step_back(cli: Cli) -> None:
    """Two plain steps on threads and two async steps on the loop, none of which would end for
    30 s: the second signal stops the worker at once (exit 130, the threads are not waited for)
    and every step goes back to the queue when the worker deregisters."""
    write_flows(cli)
    held, met, gate = cli.cwd / "held", cli.cwd / "met", cli.cwd / "gate"
    holds = [
        cli.submit(
            "slot_flows:hold", "--input", f"folder={held}", "--input", f"n={n}", "--input", f"gate={gate}"
        )
        for n in range(2)
    ]
    meets = [
        cli.submit(
            "slot_flows:meet", "--input", f"folder={met}", "--input", f"n={n}", "--input", "parties=99"
        )
        for n in range(2)
    ]
    worker = cli.start_worker("slot_flows:hold", "slot_flows:meet", "--slots", "4")

    def arrived(folder: Path) -> int:
        return len(list(folder.iterdir())) if folder.is_dir() else 0

    wait_for(lambda: arrived(held) == 2 and arrived(met) == 2, 30, "four steps running")
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("SIGTERM received")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 130, worker.stderr
    assert "Traceback" not in worker.stderr

    for instance_id in holds + meets:
        shown = cli.show(instance_id)
        assert [s["state"] for s in shown["steps"]] == ["QUEUED"], shown
    assert [w["state"] for w in cli.json("workers", "list", "--all")] == ["stopped"]
