"""Running the real ``fuseline`` console script in subprocesses, and checking what it says."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fuseline.broker.sql.engine import create_database_engine
from fuseline.broker.sql.models import instances

SCRIPT = Path(sys.executable).parent / "fuseline"
FLOWS = Path(__file__).with_name("flows.py")
DATABASE_ENV = "FUSELINE_DATABASE_URL"
#: Lines click adds around a usage error; the error itself is the one other line.
CLICK_FRAME = ("Usage: ", "Try '")


def base_env() -> dict[str, str]:
    """The test process's environment without a database setting and with unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != DATABASE_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that carry the message (click's usage frame left out)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(CLICK_FRAME)]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *expected: str) -> str:
    """Exit ``code``, one message line on stderr naming ``expected``, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0], (text, proc.stderr)
    return lines[0]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Background:
    """A ``fuseline`` process started with Popen; its stderr goes to a file (no pipe to fill)."""

    def __init__(self, proc: subprocess.Popen[str], stderr_path: Path, stdout_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.stdout_path = stdout_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and self.stderr.count(text) < count:
                raise AssertionError(f"process exited ({self.proc.returncode}) early:\n{self.stderr}")
            return self.stderr.count(text) >= count

        wait_for(seen, timeout, f"{text!r} in the log")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout}s:\n{self.stderr}") from None

    def kill(self) -> None:
        """Kill the process and (for --concurrency) its children: its own process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)


class Cli:
    """The ``fuseline`` command in a folder of its own, on one database.

    ``url=None`` is the embedded default: ``fuseline.db`` in ``cwd``. A URL is
    given through ``FUSELINE_DATABASE_URL`` (``via="env"``) or the root
    option ``--database-url`` (``via="option"``).
    """

    def __init__(
        self,
        backend: str,
        cwd: Path,
        url: str | None = None,
        via: str = "env",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.cwd = cwd
        self.url = url
        self.via = via
        self.extra_env = dict(extra_env or {})
        self.background: list[Background] = []
        shutil.copy(FLOWS, cwd / "flows.py")

    def env(self) -> dict[str, str]:
        env = base_env()
        if self.url is not None and self.via == "env":
            env[DATABASE_ENV] = self.url
        env.update(self.extra_env)
        return env

    def argv(self, args: tuple[str, ...]) -> list[str]:
        root = ["--database-url", self.url] if self.url is not None and self.via == "option" else []
        return [str(SCRIPT), *root, *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(args),
            cwd=self.cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def show(self, instance_id: str) -> dict[str, Any]:
        return self.json("instances", "show", instance_id)

    def submit(self, workflow: str, *args: str) -> str:
        proc = self.ok("submit", workflow, *args)
        instance_id = proc.stdout.strip()
        assert is_uuid(instance_id), proc.stdout
        return instance_id

    def burst(self, *workflows: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.ok("worker", "run", *workflows, "--burst", "--poll-interval", "0.05", timeout=timeout)

    def start(self, *args: str) -> Background:
        """Start ``fuseline *args`` in the background, in a process group of its own."""
        n = len(self.background)
        stderr_path = self.cwd / f"background-{n}.stderr"
        stdout_path = self.cwd / f"background-{n}.stdout"
        with stderr_path.open("w") as err, stdout_path.open("w") as out:
            proc = subprocess.Popen(
                self.argv(args),
                cwd=self.cwd,
                env=self.env(),
                stdout=out,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        started = Background(proc, stderr_path, stdout_path)
        self.background.append(started)
        return started

    def database_url(self) -> str | None:
        """The database as a URL; None where the SQLite default has not been created."""
        if self.url is not None:
            return self.url
        default = self.cwd / "fuseline.db"
        return f"sqlite:///{default}" if default.exists() else None

    def rows(self, table: sa.Table) -> list[sa.Row[Any]]:
        """Every row of ``table``, read from the database itself, not through a ``fuseline`` process:
        for what a test checks was stored (or not), and for waiting. [] where the SQLite default
        does not exist. Each ``fuseline`` command costs a process start (some 0.6 s of CPU)."""
        url = self.database_url()
        if url is None:
            return []
        engine = create_database_engine(url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.select(table)).all())
        finally:
            engine.dispose()

    def wait_for_status(self, instance_ids: Iterable[str], status: str, timeout: float, what: str) -> None:
        """Wait until every one of ``instance_ids`` has ``status``, reading the database directly."""
        wanted = set(instance_ids)

        def reached() -> bool:
            return wanted <= {row.id for row in self.rows(instances) if row.status == status}

        wait_for(reached, timeout, what)

    def start_worker(self, *args: str) -> Background:
        worker = self.start("worker", "run", *args, "--poll-interval", "0.1")
        worker.wait_for_log("started (pid")
        return worker

    def kill_all(self) -> None:
        for started in self.background:
            started.kill()
