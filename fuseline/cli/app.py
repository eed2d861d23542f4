"""The root ``fuseline`` command: global options and the command groups."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__
from .common import DATABASE_ENV, Settings
from .db import db_app
from .instances import instances_app
from .repairs import steps_app
from .schedules import schedules_app
from .server import server
from .submit import submit
from .tokens import tokens_app
from .worker import worker_app
from .workers import workers_app

app = typer.Typer(
    name="fuseline",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fuseline {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar=DATABASE_ENV,
            show_envvar=True,
            metavar="URL",
            help="postgresql+psycopg://user@host/db or sqlite:///file.db "
            "[default: sqlite:///fuseline.db in this folder]",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Durable workflow orchestration on a SQL database.

    Workflows are DAGs of Python steps. Workers on any number of machines
    claim ready steps from PostgreSQL (or the embedded SQLite default), run
    them and report back.

    Example: fuseline submit my_app.flows:etl --input day=2026-11-25 --wait
    """
    ctx.obj = Settings(database_url=database_url)


app.add_typer(db_app, name="db")
app.add_typer(worker_app, name="worker")
app.command("submit")(submit)
app.command("server")(server)
app.add_typer(instances_app, name="instances")
app.add_typer(steps_app, name="steps")
app.add_typer(workers_app, name="workers")
app.add_typer(schedules_app, name="schedules")
app.add_typer(tokens_app, name="tokens")


def main() -> None:
    """The console script: any error that escapes a command becomes one line, not a traceback.

    ``FUSELINE_DEBUG=1`` shows the traceback instead (for bug reports).
    """
    import os
    import sys

    try:
        app()
    except Exception as exc:  # the last line of defence; commands handle known errors themselves
        if os.environ.get("FUSELINE_DEBUG"):
            raise
        from .common import hide_secrets

        message = hide_secrets(f"{type(exc).__name__}: {exc}").splitlines()[0]
        sys.stderr.write(f"error: unexpected {message} (set FUSELINE_DEBUG=1 to see the traceback)\n")
        sys.exit(1)
