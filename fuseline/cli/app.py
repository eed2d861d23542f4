"""The root ``fuseline`` command: global options and the command groups."""

from __future__ import annotations

from typing import Annotated

import typer

from .._version import __version__

app = typer.Typer(
    name="fuseline",
    help="Durable workflow orchestration on a SQL database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fuseline {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Durable workflow orchestration on a SQL database.

    Workflows are DAGs of Python steps; workers on any number of machines
    claim ready steps from PostgreSQL (or the embedded SQLite default), run
    them and report back.
    """


def main() -> None:
    app()
