"""Worker OS processes for the SQL tests: start, release together, wait with a deadline, always kill.

Each worker is ``python -m tests.sql.worker`` run from the repository root
(on ``PYTHONPATH``) so it imports the same ``tests.sql.workflows`` as the
test. Workers register, then wait at a gate (a file) until every one of them
is ready, so they drain together and the timing covers the drain only.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
#: Seconds for every worker to start and register, then for all to drain.
START_TIMEOUT_SECONDS = 60.0
DRAIN_TIMEOUT_SECONDS = 120.0


def dialect_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


def subprocess_env() -> dict[str, str]:
    """This environment with the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return env


@dataclass
class WorkerOutput:
    pid: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def ran(self) -> int | None:
        """How many steps the worker's ProcessEngine ran (None for the custom loop)."""
        lines = self.stdout.strip().splitlines()
        return json.loads(lines[-1])["ran"] if lines else None


@dataclass
class WorkerRun:
    workers: list[WorkerOutput]
    #: From releasing the workers until the last one exited.
    seconds: float

    def check_clean_exit(self) -> None:
        """Every worker exited 0 and wrote nothing to stderr (no traceback, no "database is locked")."""
        for worker in self.workers:
            assert worker.returncode == 0, f"worker {worker.pid} exited {worker.returncode}:\n{worker.stderr}"
            assert worker.stderr == "", f"worker {worker.pid} wrote to stderr:\n{worker.stderr}"


#: The ``run_workers`` fixture: ``(url, workflow_names, count, seed_loop=None) -> WorkerRun``.
RunWorkers = Callable[..., WorkerRun]


def kill(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def run_worker_processes(
    folder: Path,
    url: str,
    workflow_names: Sequence[str],
    count: int,
    seed_loop: Path | None = None,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> WorkerRun:
    """Start ``count`` workers in ``folder``, release them together, wait until all exited.

    Every process started is also appended to ``started`` (for a fixture's
    last-resort cleanup), and killed here if the run fails or times out.
    """
    gate = folder / "gate"
    gate.mkdir(parents=True)
    command = [sys.executable, "-m", "tests.sql.worker", url, str(gate), *workflow_names]
    if seed_loop is not None:
        command += ["--seed-loop", str(seed_loop)]
    env = subprocess_env()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with (folder / f"{i}.out").open("wb") as out, (folder / f"{i}.err").open("wb") as err:
                process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=out, stderr=err)
            processes.append(process)
            if started is not None:
                started.append(process)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while len(list(gate.glob("ready-*"))) < count:
            exited = [i for i, p in enumerate(processes) if p.poll() is not None]
            if exited:
                pytest.fail(f"a worker exited before starting:\n{(folder / f'{exited[0]}.err').read_text()}")
            assert time.monotonic() < deadline, "the workers did not start in time"
            time.sleep(0.01)
        began = time.perf_counter()
        (gate / "go").touch()
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {process.pid} did not finish within {DRAIN_TIMEOUT_SECONDS:g} s")
        seconds = time.perf_counter() - began
    finally:
        kill(processes)
    outputs = [
        WorkerOutput(
            pid=p.pid,
            returncode=p.returncode,
            stdout=(folder / f"{i}.out").read_text(),
            stderr=(folder / f"{i}.err").read_text(),
        )
        for i, p in enumerate(processes)
    ]
    return WorkerRun(outputs, seconds)
