"""``fuseline instances``: list, show, explain, cancel, retry and signal workflow instances."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from ..broker.base import Broker, InstanceEvent, InstanceInfo, StepInfo
from ..broker.ids import instance_uuid
from ..broker.repairs import RepairAction
from ..states import INSTANCE_STATES, EventKind, Status
from .common import (
    InstanceId,
    JsonFlag,
    console,
    duration,
    iso,
    open_broker,
    plain,
    print_json,
    styled,
    user_errors,
    when,
)
from .explain import explain
from .remote import accepts_server
from .repairs import repair
from .submit import parse_at

instances_app = typer.Typer(
    help="List, show, explain, cancel, retry and signal workflow instances.\n\n"
    "Example: fuseline instances list --status FAILED",
    no_args_is_help=True,
)


def instance_json(info: InstanceInfo) -> dict[str, Any]:
    return {
        "instance_id": info.instance_id,
        "workflow_id": info.workflow_id,
        "version": info.version,
        "status": info.status.value,
        "created_at": iso(info.created_at),
        "finished_at": iso(info.finished_at),
        "steps_done": info.steps_done,
        "steps_total": len(info.steps),
        "error": info.error,
        "key": info.key,
        "priority": info.priority,
        "parent_instance_id": info.parent_instance_id,
        "parent_step": info.parent_step,
        "children": info.children,
    }


def step_json(step: StepInfo) -> dict[str, Any]:
    return {
        "name": step.name,
        "state": step.state.value,
        "attempt": step.attempt,
        "max_attempts": step.max_attempts,
        "retries": step.retries,
        "worker_id": step.worker_id,
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "result": step.result,
        "error": step.error,
        "child_instance_id": step.child_instance_id,
    }


def event_json(event: InstanceEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "kind": event.kind,
        "step": event.step_name,
        "attempt": event.attempt,
        "worker_id": event.worker_id,
        "detail": event.detail,
    }


#: The events that record why an execution of a step ended in an error.
ATTEMPT_ERRORS = {EventKind.RETRY_SCHEDULED.value: "retry scheduled", EventKind.FAILED.value: "failed"}


def attempt_errors(events: list[InstanceEvent]) -> list[InstanceEvent]:
    """Each failed execution, oldest first: a failure the broker will retry, or the last one."""
    return [e for e in events if e.kind in ATTEMPT_ERRORS and e.detail]


def attempt_error_json(event: InstanceEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "step": event.step_name,
        "attempt": event.attempt,
        "then": ATTEMPT_ERRORS[event.kind],
        "error": event.detail,
    }


@instances_app.command("list")
@accepts_server
def list_(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only this status: RUNNING, SUCCEEDED, FAILED or CANCELLED.")
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only instances of this workflow id.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only those created at or after this time, e.g. --since 2026-12-01T00:00:00Z"),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Only those created before this time, e.g. --until 2026-12-02T00:00:00+01:00"),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Only the one with this idempotency key (needs --workflow), e.g. --key order-42"),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(
            metavar="ID",
            help="The next page: those listed after this instance (the last id of the previous "
            "page), e.g. --after 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many of the newest first.")] = 0,
    json_output: JsonFlag = False,
) -> None:
    """List instances, newest first; --after pages through any number of them at the same speed.

    Example: fuseline instances list --status FAILED --since 2026-12-01T00:00:00Z --limit 10
    """
    wanted = None
    if status is not None:
        wanted = status.upper()
        if wanted not in {s.value for s in INSTANCE_STATES}:
            raise typer.BadParameter(
                f"{status!r} is not one of RUNNING, SUCCEEDED, FAILED, CANCELLED", param_hint="--status"
            )
    if key is not None and workflow is None:
        raise typer.BadParameter("keys are per workflow: add --workflow", param_hint="--key")
    filters = {
        "since": parse_at(since, "--since"),
        "until": parse_at(until, "--until"),
        "key": key,
        "after": after,
    }
    broker = open_broker(ctx)
    try:
        with user_errors():
            found = broker.list_instances(
                status=wanted, workflow_id=workflow, limit=limit, offset=offset, **filters
            )
    finally:
        broker.close()
    if json_output:
        print_json([instance_json(i) for i in found])
        return
    if not found:
        console.print("no instances")
        return
    table = Table("instance", "workflow", "status", "steps", "created (UTC)", "duration")
    for info in found:
        table.add_row(
            info.instance_id,
            plain(f"{info.workflow_id}@{info.version}"),
            styled(info.status),
            f"{info.steps_done}/{len(info.steps)}",
            when(info.created_at),
            duration(info.created_at, info.finished_at),
        )
    console.print(table)
    if len(found) == limit:
        console.print(f"next page: --after {found[-1].instance_id}", highlight=False, markup=False)


@instances_app.command()
@accepts_server
def show(
    ctx: typer.Context,
    instance_id: InstanceId,
    json_output: JsonFlag = False,
) -> None:
    """Show an instance: inputs, result, every step, the error of each failed attempt and the
    event history.

    Example: fuseline instances show 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21
    """
    broker = open_broker(ctx)
    try:
        with user_errors():
            info = broker.get_instance(instance_uuid(instance_id))
            events = broker.instance_events(info.instance_id)
    finally:
        broker.close()
    if json_output:
        print_json(
            {
                **instance_json(info),
                "inputs": info.inputs,
                "result": info.result,
                "steps": [step_json(s) for s in info.steps],
                "attempt_errors": [attempt_error_json(e) for e in attempt_errors(events)],
                "events": [event_json(e) for e in events],
            }
        )
        return
    console.print(
        f"[bold]{info.instance_id}[/]  {plain(f'{info.workflow_id}@{info.version}')}  {styled(info.status)}  "
        f"created {when(info.created_at)}  duration {duration(info.created_at, info.finished_at)}",
        highlight=False,
    )
    if info.key is not None or info.priority:
        key = "-" if info.key is None else json.dumps(info.key, ensure_ascii=False)
        console.print(f"key: {key}  priority: {info.priority}", highlight=False, markup=False)
    console.print(f"inputs: {json.dumps(info.inputs, ensure_ascii=False)}", highlight=False, markup=False)
    if info.parent_instance_id is not None:
        parent = f"parent: {info.parent_instance_id} (step {info.parent_step})"
        console.print(parent, highlight=False, markup=False)
    for s in info.steps:
        if s.child_instance_id is not None:
            console.print(f"child: {s.child_instance_id} (step {s.name})", highlight=False, markup=False)
    if info.status is Status.SUCCEEDED:
        console.print(f"result: {json.dumps(info.result, ensure_ascii=False)}", highlight=False, markup=False)
    if info.error:
        console.print(f"error: {info.error}", style="red", highlight=False, markup=False)
    steps = Table(
        "step", "state", "attempt", "retries", "worker", "started", "finished", "error", title="steps"
    )
    for s in info.steps:
        steps.add_row(
            plain(s.name),
            styled(s.state),
            # executions out of what the lost-worker limit allows: policy retries do not use it up
            f"{s.attempt}/{s.max_attempts + s.retries}",
            str(s.retries),
            (s.worker_id or "-")[:8],
            when(s.started_at),
            when(s.finished_at),
            plain(s.error.splitlines()[0]) if s.error else "",
        )
    console.print(steps)
    failures = attempt_errors(events)
    if failures:
        errors = Table("at (UTC)", "step", "attempt", "then", "error", title="errors of each attempt")
        for e in failures:
            errors.add_row(
                when(e.at),
                plain(e.step_name or ""),
                str(e.attempt or ""),
                ATTEMPT_ERRORS[e.kind],
                plain((e.detail or "").splitlines()[0]),
            )
        console.print(errors)
    history = Table("at (UTC)", "event", "step", "attempt", "worker", title="events")
    for e in events:
        history.add_row(
            when(e.at), plain(e.kind), plain(e.step_name or ""), str(e.attempt or ""), (e.worker_id or "")[:8]
        )
    console.print(history)


instances_app.command()(accepts_server(explain))


@instances_app.command()
@accepts_server
def cancel(ctx: typer.Context, instance_id: InstanceId) -> None:
    """Cancel a RUNNING instance: steps not finished end CANCELLED; late reports are refused.

    Example: fuseline instances cancel 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21
    """
    info = _change(ctx, lambda broker: broker.cancel_instance(instance_uuid(instance_id)))
    console.print(f"instance {info.instance_id} {styled(info.status)}", highlight=False)


@instances_app.command()
@accepts_server
def retry(
    ctx: typer.Context,
    instance_id: InstanceId,
    from_step: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="STEP",
            help="Run STEP and everything downstream of it again, their results reset, on any "
            "finished instance (SUCCEEDED too), e.g. --from transform",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --from: print exactly what would change, change nothing.")
    ] = False,
) -> None:
    """Run a FAILED or CANCELLED instance again from its failed and cancelled steps; with --from,
    from that step on (any finished instance).

    Example: fuseline instances retry 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21 --from transform --dry-run
    """
    if from_step is not None:
        repair(ctx, instance_id, RepairAction.RETRY_FROM, from_step, None, dry_run)
        return
    if dry_run:
        raise typer.BadParameter("--dry-run needs --from STEP", param_hint="--dry-run")
    info = _change(ctx, lambda broker: broker.retry_instance(instance_uuid(instance_id)))
    queued = [s.name for s in info.steps if s.state is Status.QUEUED]
    console.print(
        f"instance {info.instance_id} {styled(info.status)} again; queued: {plain(', '.join(queued) or '-')}",
        highlight=False,
    )


@instances_app.command()
@accepts_server
def signal(
    ctx: typer.Context,
    instance_id: InstanceId,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The signal's name, as in WaitFor(NAME).")],
    data: Annotated[
        str,
        typer.Option(
            help="The signal's data, as JSON: the WaitFor step's result, e.g. --data '{\"by\": \"ana\"}'"
        ),
    ] = "null",
) -> None:
    """Send a signal to a RUNNING instance: its WaitFor(NAME) step succeeds with the data (now,
    or when it is reached). Each signal is taken once per instance: a second one is refused.

    Example: fuseline instances signal 0b6c2f8e-5b4a-4a8e-9a56-3f1f0c7e9d21 approved --data '{"by": "ana"}'
    """
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--data") from None
    broker = open_broker(ctx)
    try:
        with user_errors():
            broker.signal(instance_uuid(instance_id), name, value)
    finally:
        broker.close()
    console.print(f"signal {name!r} sent to instance {instance_id}", highlight=False, markup=False)


def _change(ctx: typer.Context, change: Callable[[Broker], InstanceInfo]) -> InstanceInfo:
    """Apply one change to an instance through the configured database; a refusal is one line."""
    broker = open_broker(ctx)
    try:
        with user_errors():
            return change(broker)
    finally:
        broker.close()
