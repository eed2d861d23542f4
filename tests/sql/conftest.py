"""Fixtures of the SQL tests: a migrated database of either dialect, and worker processes.

``db_url`` is the URL text of a migrated, empty database: the session's
PostgreSQL database (tables emptied) or a fresh SQLite file. ``run_workers``
runs real worker processes (see :mod:`tests.sql.processes`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fuseline.broker.sql import SqlBroker
from tests.conftest import url_text
from tests.sql.processes import RunWorkers, WorkerRun, kill, run_worker_processes


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database with empty fuseline tables, as URL text (password included)."""
    if request.param == "postgres":
        return url_text(request.getfixturevalue("postgres_url"))
    url: str = request.getfixturevalue("migrated_sqlite_url")
    return url


@pytest.fixture
def broker(db_url: str) -> Iterator[SqlBroker]:
    opened = SqlBroker(db_url)
    yield opened
    opened.close()


@pytest.fixture
def run_workers(tmp_path: Path) -> Iterator[RunWorkers]:
    """``run_workers(url, ["diamond"], count=4, seed_loop=None) -> WorkerRun``."""
    started: list[subprocess.Popen[bytes]] = []
    runs = 0

    def run(url: str, workflow_names: Sequence[str], count: int, seed_loop: Path | None = None) -> WorkerRun:
        nonlocal runs
        runs += 1
        folder = tmp_path / f"workers-{runs}"
        return run_worker_processes(folder, url, workflow_names, count, seed_loop, started)

    yield run
    kill(started)
