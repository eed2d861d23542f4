"""``fuseline steps skip | set-output`` and the ``--from`` / ``--dry-run`` of ``instances retry``:
repairs an operator makes to one instance, each with a dry run that changes nothing."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ..broker.ids import instance_uuid
from ..broker.repairs import RepairAction, RepairPlan, operator_name
from .common import InstanceId, console, open_broker, plain, settings, styled, user_errors
from .remote import accepts_server

steps_app = typer.Typer(
    help="Repair one step of an instance: skip it, or set its output; each with --dry-run.\n\n"
    "Example: fuseline steps skip 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21 charge --dry-run",
    no_args_is_help=True,
)

StepName = Annotated[str, typer.Argument(metavar="STEP", help="The step's name (a Map item: name[i]).")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print exactly what would change, and change nothing.")
]


def repair(
    ctx: typer.Context, instance_id: str, action: RepairAction, step: str, result: Any, dry_run: bool
) -> None:
    """Plan the repair (a dry run stops there) or apply it; print the changes either way."""
    # Through a server the token's name is recorded (the server fills it in); here, the OS user.
    who = None if settings(ctx).server_url else operator_name()
    broker = open_broker(ctx)
    try:
        with user_errors():
            instance_id = instance_uuid(instance_id)
            plan = broker.plan_repair(instance_id, action, step, result, operator=who)
            if not dry_run:
                if action is RepairAction.RETRY_FROM:
                    broker.retry_instance(instance_id, from_step=step, operator=who)
                elif action is RepairAction.SKIP:
                    broker.skip_step(instance_id, step, operator=who)
                else:
                    broker.set_step_output(instance_id, step, result, operator=who)
    finally:
        broker.close()
    show(plan, dry_run)


def show(plan: RepairPlan, dry_run: bool) -> None:
    head = "dry run, nothing changed: would " if dry_run else ""
    console.print(
        f"{head}{plan.action} {plain(repr(plan.step))} of instance {plan.instance_id}: "
        f"{styled(plan.status_before)} -> {styled(plan.status_after)}",
        highlight=False,
    )
    table = Table("step", "before", "after")
    for change in plan.changes:
        table.add_row(plain(change.step), styled(change.before), styled(change.after))
    console.print(table)


@steps_app.command()
@accepts_server
def skip(ctx: typer.Context, instance_id: InstanceId, step: StepName, dry_run: DryRun = False) -> None:
    """End a step SKIPPED (not yet done, FAILED or CANCELLED): the DAG goes on as for any skip,
    and a FAILED or CANCELLED instance runs again. Its worker, if one holds it, is refused.

    Example: fuseline steps skip 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21 charge --dry-run
    """
    repair(ctx, instance_id, RepairAction.SKIP, step, None, dry_run)


@steps_app.command("set-output")
@accepts_server
def set_output(
    ctx: typer.Context,
    instance_id: InstanceId,
    step: StepName,
    result: Annotated[
        str, typer.Option(help="The step's result, as JSON, e.g. --result '{\"charged\": 12.5}'")
    ],
    dry_run: DryRun = False,
) -> None:
    """End a step SUCCEEDED with this result (JSON, size-limited like any result): its
    successors receive it, and a FAILED or CANCELLED instance runs again.

    Example: fuseline steps set-output 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21 charge --result '{"charged": 1}'
    """
    try:
        value = json.loads(result)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--result") from None
    repair(ctx, instance_id, RepairAction.SET_OUTPUT, step, value, dry_run)
