"""Real ``fuseline worker run`` processes: started from the console script, signalled, always killed.

Each worker runs in a process group of its own (``start_new_session``), so a
signal reaches exactly that worker; its stderr goes to a file that failure
messages quote. :class:`Workers` is a context manager that kills every
process it started on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "fuseline"
REPOSITORY = Path(__file__).resolve().parents[2]
DATABASE_ENV = "FUSELINE_DATABASE_URL"
#: Lines of each worker's stderr quoted in a failure message.
TAIL_LINES = 40


def worker_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != DATABASE_ENV}
    env[DATABASE_ENV] = url
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)  # the worker imports tests.chaos.flows from its folder, the repository
    return env


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Worker:
    """One ``fuseline worker run`` process."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, number: int) -> None:
        self.proc = proc
        self.log = log
        self.number = number
        self.killed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL the worker's process group and reap it."""
        self.killed = True
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def wait_for_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        def seen() -> bool:
            log = self.stderr
            if log.count(text) >= count:
                return True
            if not self.alive():
                raise AssertionError(f"worker {self.pid} exited ({self.proc.returncode}) early:\n{log}")
            return False

        wait_for(seen, timeout, f"{text!r} in the log of worker {self.pid}")

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.stderr.splitlines()[-lines:])


class Workers:
    """Worker processes of one test, all killed when the ``with`` block ends."""

    def __init__(self, folder: Path, url: str, spec: str, *options: str) -> None:
        self.folder = folder
        self.url = url
        self.spec = spec
        self.options = options
        self.started: list[Worker] = []
        folder.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    def start(self, url: str | None = None, *options: str) -> Worker:
        number = len(self.started)
        log = self.folder / f"worker-{number}.stderr"
        argv = [str(SCRIPT), "worker", "run", self.spec, *self.options, *options]
        with log.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPOSITORY,
                env=worker_env(url or self.url),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        worker = Worker(proc, log, number)
        self.started.append(worker)
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.started if w.alive()]

    def unexpected_exits(self) -> list[Worker]:
        """Workers that exited although the test did not kill or stop them."""
        return [w for w in self.started if not w.killed and not w.alive()]

    def stop_all(self, timeout: float = 20) -> dict[int, int]:
        """SIGTERM every live worker (graceful stop) and wait; returns pid -> exit code."""
        running = self.alive()
        for worker in running:
            worker.killed = True
            worker.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for worker in running:
            try:
                codes[worker.pid] = worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes[worker.pid] = -9
        return codes

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.alive():
                worker.kill()

    def logs(self, which: list[Worker] | None = None) -> str:
        """The end of every worker's stderr, for failure messages."""
        shown = which if which is not None else self.started
        return "\n".join(
            f"--- worker {w.number} (pid {w.pid}, exit {w.proc.returncode}) ---\n{w.tail()}" for w in shown
        )
