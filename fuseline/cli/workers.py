"""``fuseline workers``: who is working."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import console, iso, open_broker, plain, print_json, user_errors, when
from .remote import accepts_server

workers_app = typer.Typer(
    help="Show registered workers.\n\nExample: fuseline workers list --all", no_args_is_help=True
)


@workers_app.command("list")
@accepts_server
def list_(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only (machine-readable).")] = False,
    all_workers: Annotated[
        bool, typer.Option("--all", help="Include workers that stopped (hidden by default).")
    ] = False,
) -> None:
    """List workers: host, pid, workflows, last heartbeat, alive or stale, current step.

    A worker is stale when it has not sent a heartbeat for two lease periods:
    it crashed or hangs, and its steps go to others when their leases expire.

    Example: fuseline workers list --all
    """
    broker = open_broker(ctx)
    try:
        with user_errors():
            found = broker.list_workers()
    finally:
        broker.close()
    if not all_workers:
        found = [w for w in found if w.stopped_at is None]
    if json_output:
        print_json(
            [
                {
                    "worker_id": w.worker_id,
                    "host": w.host,
                    "pid": w.pid,
                    "workflows": w.workflows,
                    "started_at": iso(w.started_at),
                    "last_heartbeat": iso(w.last_heartbeat),
                    "stopped_at": iso(w.stopped_at),
                    "state": _state(w.alive, w.stopped_at is not None),
                    "current_steps": w.current_steps,
                }
                for w in found
            ]
        )
        return
    if not found:
        console.print("no workers" + ("" if all_workers else " running (use --all to see stopped ones)"))
        return
    table = Table("worker", "host", "pid", "workflows", "last heartbeat (UTC)", "state", "current step")
    for w in found:
        state = _state(w.alive, w.stopped_at is not None)
        colour = {"alive": "green", "stale": "red", "stopped": "dim"}[state]
        table.add_row(
            w.worker_id,
            plain(w.host),
            str(w.pid),
            plain(", ".join(w.workflows)),
            when(w.last_heartbeat),
            f"[{colour}]{state}[/]",
            plain(", ".join(w.current_steps) or "-"),
        )
    console.print(table)


def _state(alive: bool, stopped: bool) -> str:
    if stopped:
        return "stopped"
    return "alive" if alive else "stale"
