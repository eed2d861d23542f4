"""``fuseline submit``: start an instance of a workflow, optionally waiting for it."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from ..broker.dispatching import check_options
from ..errors import InvalidDispatch
from ..states import Status
from .common import err_console, fail, open_broker, user_errors
from .loading import load_workflow
from .remote import accepts_server

#: Seconds between status polls while waiting.
WAIT_POLL_SECONDS = 0.2


def parse_inputs(pairs: list[str], inputs_json: str | None) -> dict[str, Any]:
    """Build the inputs object: ``--inputs-json`` first, then each ``--input k=v`` over it.

    A value is read as JSON when it is valid JSON (``n=3`` is the number 3,
    ``tags=["a"]`` a list) and taken as a plain string otherwise.
    """
    inputs: dict[str, Any] = {}
    if inputs_json is not None:
        try:
            parsed = json.loads(inputs_json)
        except ValueError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--inputs-json") from None
        if not isinstance(parsed, dict):
            raise typer.BadParameter(
                f"must be a JSON object, got {type(parsed).__name__}", param_hint="--inputs-json"
            )
        inputs.update(parsed)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--input")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        inputs[name.strip()] = value
    return inputs


def parse_at(text: str | None, option: str = "--at") -> datetime | None:
    """``--at`` (or ``option``): an ISO 8601 time that names its time zone (a naive time would be
    a guess)."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time (for example: 2026-12-01T02:30:00+01:00)", param_hint=option
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise typer.BadParameter(
            f"{text!r} has no time zone; add one, e.g. 2026-12-01T02:30:00+01:00 or 2026-12-01T01:30:00Z",
            param_hint=option,
        )
    return at


def check_dispatch_options(delay: float | None, at: datetime | None, key: str | None, priority: int) -> None:
    """The dispatch options, checked as a broker would check them, but before the database is
    touched: a mistake is a usage error (exit 2) naming its option."""
    if delay is not None and at is not None:
        raise typer.BadParameter("give --delay or --at, not both", param_hint="--delay / --at")
    for hint, options in (
        ("--delay", (delay, None, None, 0)),
        ("--at", (None, at, None, 0)),
        ("--key", (None, None, key, 0)),
        ("--priority", (None, None, None, priority)),
    ):
        try:
            check_options(*options)
        except InvalidDispatch as exc:
            raise typer.BadParameter(str(exc), param_hint=hint) from None


@accepts_server
def submit(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="MODULE:WORKFLOW", help="The workflow to start.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", metavar="NAME=VALUE", help="An input; VALUE is parsed as JSON if it can be."
        ),
    ] = None,
    inputs_json: Annotated[
        str | None, typer.Option("--inputs-json", metavar="JSON", help="All inputs as one JSON object.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the instance to finish.")] = False,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="With --wait: give up after this many seconds (exit 1).")
    ] = None,
    delay: Annotated[
        float | None,
        typer.Option(
            "--delay",
            metavar="SECONDS",
            help="Start the first steps this many seconds from now (on the database's clock), "
            "e.g. --delay 3600.",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="ISO8601",
            help="Start the first steps at this time, which must name its time zone, "
            "e.g. --at 2026-12-01T02:30:00+01:00.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            metavar="KEY",
            help="An idempotency key (up to 200 characters): one instance per key of the workflow. "
            "Submitting the key again with the same inputs prints the existing instance's id; with "
            "other inputs it fails, e.g. --key invoice-1042.",
        ),
    ] = None,
    priority: Annotated[
        int,
        typer.Option(
            "--priority",
            metavar="N",
            help="Among ready steps, higher priorities are claimed first; every step of the instance "
            "has it (default 0, may be negative), e.g. --priority 10.",
        ),
    ] = 0,
) -> None:
    """Start an instance of a workflow and print its id (alone on stdout).

    With --wait, show progress on stderr until the instance ends: exit 0 and
    print its result (JSON) when it SUCCEEDED, exit 1 with the failing
    step's error when it FAILED or was CANCELLED.

    --delay or --at hold its first steps back until then; --key makes a
    repeated submit harmless; --priority puts it ahead of (or behind) the
    rest of the queue.

    Example: fuseline submit my_app.flows:etl --input day=2026-11-25 --input limit=100 --wait

    Example: fuseline submit my_app.flows:etl --input day=2026-11-25 --key etl-2026-11-25 --delay 3600
    """
    values = parse_inputs(inputs or [], inputs_json)
    start_at = parse_at(at)
    check_dispatch_options(delay, start_at, key, priority)
    target = load_workflow(workflow)
    broker = open_broker(ctx)
    try:
        with user_errors():
            instance_id = target.dispatch(
                broker, values, delay=delay, at=start_at, key=key, priority=priority
            )
        sys.stdout.write(instance_id + "\n")
        sys.stdout.flush()
        if wait:
            _wait(broker, instance_id, timeout)
    finally:
        broker.close()


def _wait(broker: Any, instance_id: str, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    with user_errors(), err_console.status(f"instance {instance_id} running") as status:
        while True:
            info = broker.get_instance(instance_id)
            status.update(
                f"instance {instance_id}: {info.status}, {info.steps_done}/{len(info.steps)} steps done"
            )
            if info.status is not Status.RUNNING:
                break
            if deadline is not None and time.monotonic() >= deadline:
                fail(f"timed out after {timeout:g}s; instance {instance_id} is still RUNNING")
            time.sleep(WAIT_POLL_SECONDS)
    if info.status is Status.SUCCEEDED:
        err_console.print(f"instance {instance_id} [green]SUCCEEDED[/]", highlight=False)
        sys.stdout.write(json.dumps(info.result, ensure_ascii=False) + "\n")
        return
    reason = info.error.splitlines()[0] if info.error else "cancelled"
    fail(f"instance {instance_id} {info.status}: {reason} (details: fuseline instances show {instance_id})")
