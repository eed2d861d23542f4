"""``fuseline instances explain``: why each unfinished step of an instance is not running (or is)."""

from __future__ import annotations

from dataclasses import asdict

import typer
from rich.table import Table

from ..broker.base import StepExplanation
from ..broker.ids import instance_uuid
from .common import InstanceId, JsonFlag, console, open_broker, plain, print_json, styled, user_errors

#: How each reason is shown in the table: the step is on its way, waits for time, or is held back.
REASON_STYLE = {
    "running": "cyan",
    "queued": "blue",
    "waiting": "dim",
    "delayed": "dim",
    "sleeping": "dim",
    "retry_scheduled": "yellow",
    "concurrency_limit": "yellow",
    "workflow_concurrency_limit": "yellow",
    "rate_limited": "yellow",
    "no_worker": "red",
}


def explain(ctx: typer.Context, instance_id: InstanceId, json_output: JsonFlag = False) -> None:
    """Say why each unfinished step of an instance is where it is.

    One row per PENDING, QUEUED or RUNNING step, in workflow order, with a
    reason: waiting (for its predecessors), delayed, retry_scheduled,
    sleeping, concurrency_limit, workflow_concurrency_limit, rate_limited,
    no_worker (no live worker serves its workflow and queue), queued (a free
    worker will take it) or running (on which worker, until when). A
    finished instance has none (--json: []).

    Example: fuseline instances explain 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21
    """
    broker = open_broker(ctx)
    try:
        with user_errors():
            wanted = instance_uuid(instance_id)
            explained = broker.explain_instance(wanted)
            finished = None if explained else broker.get_instance(wanted)
    finally:
        broker.close()
    if json_output:
        print_json([explanation_json(e) for e in explained])
        return
    if finished is not None:
        console.print(
            f"instance {finished.instance_id} is {styled(finished.status)}: no step is waiting or running",
            highlight=False,
        )
        return
    table = Table("step", "state", "reason", "detail")
    for e in explained:
        style = REASON_STYLE.get(e.reason)
        reason = plain(e.reason)
        table.add_row(
            plain(e.step), styled(e.state), f"[{style}]{reason}[/]" if style else reason, plain(e.detail)
        )
    console.print(table)


def explanation_json(explanation: StepExplanation) -> dict[str, str]:
    """``{"step", "state", "reason", "detail"}``, the state as its name."""
    return {**asdict(explanation), "state": explanation.state.value}
