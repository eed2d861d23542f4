"""``fuseline schedules``: cron and interval schedules that running workers fire, once per tick."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.table import Table

from ..broker.schedules import ScheduleInfo, ScheduleSpec
from ..errors import ScheduleError
from .common import JsonFlag, console, fail, open_broker, plain, print_json, user_errors, when
from .loading import load_workflow
from .remote import accepts_server
from .submit import parse_inputs

schedules_app = typer.Typer(
    help="Run workflows on a schedule: running workers fire each due tick once (no extra daemon).\n\n"
    "Example: fuseline schedules add my_app.flows:etl --cron '30 2 * * *' --timezone Europe/Oslo",
    no_args_is_help=True,
)

ScheduleName = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.")]

#: ``--every`` units: plain seconds, or a number with s, m, h or d.
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str | None) -> int | None:
    """``--every``: whole seconds (``90``) or with a unit (``30s``, ``15m``, ``1h``, ``1d``)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(-?\d+)\s*([smhd]?)\s*", text)
    if match is None:
        raise ScheduleError(f"--every {text!r} is not a whole number of seconds (e.g. 60, 15m, 1h or 1d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


@schedules_app.command("add")
@accepts_server
def add(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="MODULE:WORKFLOW", help="The workflow to run.")],
    cron: Annotated[
        str | None,
        typer.Option(
            "--cron",
            metavar="EXPR",
            help="A cron expression (minute hour day-of-month month day-of-week) in the schedule's "
            "time zone, e.g. --cron '30 2 * * *' (every day at 02:30).",
        ),
    ] = None,
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            metavar="SECONDS",
            help="Instead of a cron expression: an interval in whole seconds (or with s, m, h, d); "
            "ticks fall on multiples of it since 1970 in UTC, e.g. --every 300 or --every 5m.",
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="NAME=VALUE",
            help="An input of every instance; VALUE is parsed as JSON if it can be, e.g. --input limit=100.",
        ),
    ] = None,
    inputs_json: Annotated[
        str | None,
        typer.Option(
            "--inputs-json",
            metavar="JSON",
            help="All inputs as one JSON object, e.g. --inputs-json '{\"n\": 1}'.",
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            metavar="TZ",
            help="The IANA time zone cron expressions are read in (default UTC), "
            "e.g. --timezone Europe/Oslo.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="The schedule's name (default: the workflow id); each tick's instance is keyed "
            "NAME@TICK, e.g. --name nightly-etl.",
        ),
    ] = None,
) -> None:
    """Add a schedule: at each tick a running worker dispatches one instance of the workflow.

    However many workers run, a tick fires once (its instance's key is the
    schedule name and the tick time). Ticks missed while no worker ran are
    not caught up: only the latest fires. A cron time that a DST change skips
    fires right after the gap; one that comes twice fires once.

    Example: fuseline schedules add my_app.flows:etl --cron '30 2 * * *' --timezone Europe/Oslo -i limit=100

    Example: fuseline schedules add my_app.flows:ping --every 60 --name ping-every-minute
    """
    values = parse_inputs(inputs or [], inputs_json)
    with user_errors():  # the spec first: a mistake there needs neither the module nor the database
        seconds = parse_every(every)
        ScheduleSpec.of(cron=cron, every=seconds, timezone=timezone)
    try:
        target = load_workflow(workflow)
    except typer.BadParameter as exc:  # refused: a schedule of a workflow no one can import
        fail(f"cannot add a schedule of {workflow}: {exc.message}")
    broker = open_broker(ctx)
    try:
        with user_errors():
            added = broker.add_schedule(
                target, name=name, cron=cron, every=seconds, inputs=values, timezone=timezone
            )
    finally:
        broker.close()
    console.print(
        f"schedule {plain(added.name)} added: {plain(added.spec.describe())} runs "
        f"{plain(added.workflow_id)}; next fire time {when(added.next_fire_at)} UTC",
        highlight=False,
        soft_wrap=True,
    )


@schedules_app.command("list")
@accepts_server
def list_(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List schedules: workflow, spec, time zone, paused or not, next fire time, last instance.

    Example: fuseline schedules list --json
    """
    broker = open_broker(ctx)
    try:
        with user_errors():
            found = broker.list_schedules()
    finally:
        broker.close()
    if json_output:
        print_json([s.as_json() for s in found])
        return
    if not found:
        console.print("no schedules (add one: fuseline schedules add MODULE:WORKFLOW --cron EXPR)")
        return
    table = Table("name", "workflow", "spec", "state", "next fire (UTC)", "last tick (UTC)", "last instance")
    for s in found:
        table.add_row(
            plain(s.name),
            plain(f"{s.workflow_id}@{s.version}"),
            plain(s.spec.describe()),
            "[yellow]paused[/]" if s.paused else "[green]active[/]",
            "-" if s.paused else when(s.next_fire_at),
            when(s.last_tick),
            s.last_instance_id or "-",
        )
    console.print(table)


@schedules_app.command("pause")
@accepts_server
def pause(ctx: typer.Context, name: ScheduleName) -> None:
    """Stop firing a schedule until it is resumed.

    Example: fuseline schedules pause nightly-etl
    """
    _change(ctx, name, "pause")


@schedules_app.command("resume")
@accepts_server
def resume(ctx: typer.Context, name: ScheduleName) -> None:
    """Fire a paused schedule again, from its first tick after now (missed ticks do not fire).

    Example: fuseline schedules resume nightly-etl
    """
    _change(ctx, name, "resume")


@schedules_app.command("remove")
@accepts_server
def remove(ctx: typer.Context, name: ScheduleName) -> None:
    """Delete a schedule; the instances it started stay.

    Example: fuseline schedules remove nightly-etl
    """
    _change(ctx, name, "remove")


def _change(ctx: typer.Context, name: str, action: str) -> None:
    broker = open_broker(ctx)
    try:
        with user_errors():
            changed: ScheduleInfo | None = getattr(broker, f"{action}_schedule")(name)
    finally:
        broker.close()
    if changed is None:
        console.print(f"schedule {plain(name)} removed", highlight=False)
    elif changed.paused:
        console.print(f"schedule {plain(name)} paused", highlight=False)
    else:
        console.print(
            f"schedule {plain(name)} active; next fire time {when(changed.next_fire_at)} UTC", highlight=False
        )
