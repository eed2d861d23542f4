"""Fixtures of the CLI tests: a ``Cli`` on PostgreSQL and on the embedded SQLite default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import Cli
from tests.conftest import url_text

BACKENDS = ("postgres", "sqlite")


def on_backend(name: str) -> pytest.MarkDecorator:
    """Run a module's ``cli`` tests on one backend only (``pytestmark = on_backend(...)``).

    For modules whose commands reach the database only through the broker, which the contract
    suite already runs on PostgreSQL and SQLite: running each CLI test twice would double the
    slowest part of the suite (every command is a new process) and test nothing new. The
    modules are split between the two backends, so the CLI runs on both.
    """
    return pytest.mark.parametrize("backend", [name])


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cli(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cli]:
    """``fuseline`` run in ``tmp_path`` (where ``flows.py`` is) on a database with empty tables.

    PostgreSQL: the session database, through ``FUSELINE_DATABASE_URL``.
    SQLite: no URL at all, so the default ``fuseline.db`` appears in ``tmp_path``.
    """
    if backend == "postgres":
        runner = Cli(backend, tmp_path, url_text(request.getfixturevalue("postgres_url")))
    else:
        runner = Cli(backend, tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Iterator[Cli]:
    """The embedded default only (for tests that need no database server)."""
    runner = Cli("sqlite", tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()
