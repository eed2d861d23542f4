"""Every command that reads or changes instances, through ``fuseline server`` (``--server URL
--token T``), by the real console script with no database setting at all.

One server per module over a database of its own. The commands' environment has no
``FUSELINE_DATABASE_URL``, so a command that opened a database anyway would create the SQLite
default in its folder: each test checks that none appeared.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.migrate import upgrade
from fuseline.service.server import ServerSettings
from tests.cli.helpers import Cli, assert_one_line_error, is_uuid
from tests.conftest import url_text
from tests.support.databases import PostgresServer
from tests.support.servers import ServerProcess, create_token, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Site:
    server: ServerProcess
    operator: str
    worker: str


@pytest.fixture(scope="module")
def site(postgres_server: PostgresServer) -> Iterator[Site]:
    url = postgres_server.create_database("fuseline_cli_server")
    engine = create_database_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    text = url_text(url)
    operator = create_token(text, "cli-operator", "operator")
    worker = create_token(text, "cli-worker", "worker")
    server = ServerProcess(ServerSettings(text, connections=4)).start()
    try:
        yield Site(server, operator, worker)
    finally:
        server.kill()
        postgres_server.drop_database(url)


class RemoteCli(Cli):
    """``fuseline ARGS --server URL --token T``: the options after the command, as a user types them."""

    def __init__(self, cwd: Path, server: str, token: str | None) -> None:
        super().__init__("server", cwd)
        self.server, self.token = server, token

    def argv(self, args: tuple[str, ...]) -> list[str]:
        remote = ["--server", self.server] + (["--token", self.token] if self.token is not None else [])
        return [*super().argv(args), *remote]

    def burst(self, *workflows: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.ok("worker", "run", *workflows, "--burst", "--poll-interval", "0.05", timeout=timeout)


@pytest.fixture
def cli(site: Site, tmp_path: Path) -> Iterator[RemoteCli]:
    runner = RemoteCli(tmp_path, site.server.url, site.operator)
    try:
        yield runner
    finally:
        runner.kill_all()
    assert not (tmp_path / "fuseline.db").exists(), "a command opened the SQLite default, not the server"


def worker_cli(site: Site, cli: RemoteCli) -> RemoteCli:
    """The same folder with the worker token: what ``worker run`` is given in production."""
    return RemoteCli(cli.cwd, site.server.url, site.worker)


def test_submit_a_burst_worker_and_the_reads(site: Site, cli: RemoteCli) -> None:
    instance_id = cli.submit("flows:diamond", "--input", "x=1", "--input", "y=2")
    queued = cli.show(instance_id)
    assert queued["status"] in ("QUEUED", "RUNNING") and queued["workflow_id"] == "cli-diamond"
    assert "a" in cli.ok("instances", "explain", instance_id).stdout

    worker_cli(site, cli).burst("flows:diamond")
    done = cli.show(instance_id)
    assert (done["status"], done["result"]) == ("SUCCEEDED", 3 * 2 + 4), done
    listed = cli.json("instances", "list", "--workflow", "cli-diamond")
    assert instance_id in [row["instance_id"] for row in listed]
    assert instance_id in cli.ok("instances", "list").stdout
    assert [w["state"] for w in cli.json("workers", "list", "--all")][:1] == ["stopped"]


def test_submit_wait_with_a_worker_on_the_server(site: Site, cli: RemoteCli) -> None:
    worker = worker_cli(site, cli).start("worker", "run", "flows:diamond", "--poll-interval", "0.1")
    worker.wait_for_log("started (pid")
    alive = cli.json("workers", "list")
    assert any(w["pid"] == worker.pid for w in alive), alive
    waited = cli.ok("submit", "flows:diamond", "--input", "x=5", "--wait", "--timeout", "30")
    assert "SUCCEEDED" in waited.stdout + waited.stderr, waited
    worker.signal()
    assert worker.wait(20) == 0, worker.stderr


def test_cancel_retry_retry_from_and_repairs(cli: RemoteCli, site: Site) -> None:
    marker = cli.cwd / "marker"
    marker.touch()
    first = cli.submit("flows:flaky", "--input", f"marker={marker}")
    second = cli.submit("flows:flaky", "--input", f"marker={marker}")
    third = cli.submit("flows:flaky", "--input", f"marker={marker}")
    gated = cli.submit("flows:gated", "--input", f"gate={cli.cwd / 'gate'}")
    cancelled = cli.ok("instances", "cancel", gated)
    assert "CANCELLED" in cancelled.stdout
    assert cli.show(gated)["status"] == "CANCELLED"

    worker = worker_cli(site, cli)
    worker.burst("flows:flaky")
    assert {cli.show(i)["status"] for i in (first, second, third)} == {"FAILED"}
    marker.unlink()

    cli.ok("instances", "retry", first)
    dry = cli.ok("instances", "retry", second, "--from", "prepare", "--dry-run")
    assert "prepare" in dry.stdout and cli.show(second)["status"] == "FAILED", "a dry run changed something"
    cli.ok("instances", "retry", second, "--from", "prepare")
    dry = cli.ok("steps", "set-output", third, "fragile", "--result", '"by hand"', "--dry-run")
    assert "fragile" in dry.stdout and cli.show(third)["status"] == "FAILED", "a dry run changed something"
    cli.ok("steps", "set-output", third, "fragile", "--result", '"by hand"')
    repaired = cli.show(third)
    assert (repaired["status"], repaired["result"]) == ("SUCCEEDED", "by hand")
    # the server records a repair under the token's name
    assert any("cli-operator" in json.dumps(e["detail"]) for e in repaired["events"]), repaired["events"]

    worker.burst("flows:flaky")
    for instance_id in (first, second):
        assert cli.show(instance_id)["status"] == "SUCCEEDED"


def test_skip_and_signal(cli: RemoteCli, site: Site) -> None:
    shutil.copy(EXAMPLES / "approval.py", cli.cwd / "approval.py")
    marker = cli.cwd / "marker"
    marker.touch()
    flaky = cli.submit("flows:flaky", "--input", f"marker={marker}")
    approval = cli.submit("approval:approval", "--input", "title=Q4")
    worker = worker_cli(site, cli)
    worker.burst("flows:flaky", "approval:approval")
    assert "would skip 'fragile'" in cli.ok("steps", "skip", flaky, "fragile", "--dry-run").stdout
    assert cli.show(flaky)["status"] == "FAILED"
    cli.ok("steps", "skip", flaky, "fragile")
    assert cli.show(flaky)["status"] == "SUCCEEDED"

    assert "waiting for signal 'approved'" in cli.ok("instances", "explain", approval).stdout
    sent = cli.ok("instances", "signal", approval, "approved", "--data", '{"by": "ana"}')
    assert f"signal 'approved' sent to instance {approval}" in sent.stdout
    again = cli.run("instances", "signal", approval, "approved")
    assert_one_line_error(again, 1, "already received signal 'approved'")
    worker.burst("approval:approval")
    assert cli.show(approval)["result"] == "published 'Q4', approved by ana"


def test_schedules_add_list_pause_resume_remove(cli: RemoteCli) -> None:
    cli.ok("schedules", "add", "flows:diamond", "--every", "3600", "--name", "cli-hourly", "-i", "x=1")
    cli.ok("schedules", "add", "flows:odd_name", "--cron", "30 2 * * *")  # named 'cli-[/odd] [bold]'
    names = {s["name"]: s for s in cli.json("schedules", "list")}
    assert {"cli-hourly", "cli-[/odd] [bold]"} <= set(names), names
    for name in ("cli-hourly", "cli-[/odd] [bold]"):
        cli.ok("schedules", "pause", name)
        assert {s["name"]: s for s in cli.json("schedules", "list")}[name]["paused"] is True
        cli.ok("schedules", "resume", name)
        cli.ok("schedules", "remove", name)
    assert not {"cli-hourly", "cli-[/odd] [bold]"} & {s["name"] for s in cli.json("schedules", "list")}
    assert_one_line_error(cli.run("schedules", "pause", "cli-hourly"), 1, "cli-hourly")


def test_the_server_and_token_from_the_environment(site: Site, tmp_path: Path) -> None:
    runner = Cli(
        "server", tmp_path, extra_env={"FUSELINE_SERVER": site.server.url, "FUSELINE_TOKEN": site.operator}
    )
    instance_id = runner.submit("flows:diamond", "--input", "x=2")
    assert is_uuid(instance_id)
    assert runner.show(instance_id)["instance_id"] == instance_id
    assert not (tmp_path / "fuseline.db").exists(), "the environment's server was not used"


def test_a_wrong_token_and_an_unreachable_server_are_one_line_errors(site: Site, tmp_path: Path) -> None:
    wrong = RemoteCli(tmp_path, site.server.url, "flt_000000000000_" + "A" * 43)
    assert_one_line_error(wrong.run("instances", "list"), 1, "token")
    viewer_denied = RemoteCli(tmp_path, site.server.url, site.worker)
    assert_one_line_error(viewer_denied.run("instances", "list"), 1, "worker")
    nobody = RemoteCli(tmp_path, f"http://127.0.0.1:{free_port()}", site.operator)
    proc = nobody.run("instances", "list", timeout=30)
    assert_one_line_error(proc, 1, "cannot be reached")
    assert not (tmp_path / "fuseline.db").exists()
