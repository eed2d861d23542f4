"""Operator actions on an instance, each confirmed after a dry run.

An action's form posts to ``confirm``, which changes nothing: it shows what the action
would do (``plan_repair`` for the repairs, the same facts the CLI's ``--dry-run`` prints;
the steps a cancel or retry would move for the others) with an Apply button that posts
the same fields to ``apply``. Both need an operator's session and the session's CSRF
token. Repairs are recorded under the token's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...broker.base import InstanceInfo
from ...broker.repairs import RepairAction
from ...states import BROKEN_STATES, UNFINISHED_STATES, Status
from ..context import context_of
from .access import Form, Viewer, operator_form, signed_in
from .render import PageRoute, Refused, as_json, page

router = APIRouter(route_class=PageRoute, include_in_schema=False)

REPAIRS = {
    "retry-from": RepairAction.RETRY_FROM,
    "skip": RepairAction.SKIP,
    "set-output": RepairAction.SET_OUTPUT,
}
TITLES = {
    "cancel": "Cancel the instance",
    "retry": "Retry the failed and cancelled steps",
    "retry-from": "Retry from step",
    "skip": "Skip step",
    "set-output": "Set a step's output",
    "signal": "Send a signal",
}


@dataclass
class Confirmation:
    """What an action would do, as the confirmation page shows it."""

    action: str
    title: str
    summary: str
    status_before: Status
    status_after: Status
    changes: list[tuple[str, Status, Status]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


@router.post("/instances/{instance_id}/confirm")
def confirm(
    request: Request,
    instance_id: str,
    viewer: Viewer = Depends(signed_in),  # noqa: B008 (FastAPI's way)
    form: Form = Depends(operator_form),  # noqa: B008
) -> Response:
    info = context_of(request).broker.get_instance(instance_id)
    confirmation = dry_run(request, info, form, viewer.name)
    return page(request, "confirm.html", info=info, confirmation=confirmation)


@router.post("/instances/{instance_id}/apply")
def apply(
    request: Request,
    instance_id: str,
    viewer: Viewer = Depends(signed_in),  # noqa: B008
    form: Form = Depends(operator_form),  # noqa: B008
) -> Response:
    broker = context_of(request).broker
    action, step = _action(form), form.get("step", "")
    if action == "cancel":
        broker.cancel_instance(instance_id)
    elif action == "retry":
        broker.retry_instance(instance_id, operator=viewer.name)
    elif action == "retry-from":
        broker.retry_instance(instance_id, _step(step), operator=viewer.name)
    elif action == "skip":
        broker.skip_step(instance_id, _step(step), operator=viewer.name)
    elif action == "set-output":
        broker.set_step_output(instance_id, _step(step), _json(form, "result"), operator=viewer.name)
    else:
        broker.signal(instance_id, _signal_name(form), _json(form, "data"))
    return RedirectResponse(f"/instances/{instance_id}", status_code=303)


def dry_run(request: Request, info: InstanceInfo, form: Form, operator: str) -> Confirmation:
    """The confirmation of the form's action on ``info``; nothing is changed."""
    action = _action(form)
    title = TITLES[action]
    if action in REPAIRS:
        step = _step(form.get("step", ""))
        result = _json(form, "result") if action == "set-output" else None
        plan = context_of(request).broker.plan_repair(
            info.instance_id, REPAIRS[action], step, result, operator=operator
        )
        fields = {"action": action, "step": step, "result": form.get("result", "")}
        changes = [(c.step, c.before, c.after) for c in plan.changes]
        return Confirmation(
            action, title, plan.describe(), plan.status_before, plan.status_after, changes, fields
        )
    if action == "cancel":
        _require(info, {Status.RUNNING}, "cancel")
        changes = [(s.name, s.state, Status.CANCELLED) for s in info.steps if s.state in UNFINISHED_STATES]
        summary = f"cancel by {operator}: {len(changes)} unfinished steps end CANCELLED"
        return Confirmation(
            action, title, summary, info.status, Status.CANCELLED, changes, {"action": action}
        )
    if action == "retry":
        _require(info, BROKEN_STATES, "retry")
        changes = [(s.name, s.state, Status.PENDING) for s in info.steps if s.state in BROKEN_STATES]
        summary = f"retry by {operator}: the failed and cancelled steps run again"
        return Confirmation(action, title, summary, info.status, Status.RUNNING, changes, {"action": action})
    _require(info, {Status.RUNNING}, "signal")
    name, data = _signal_name(form), _json(form, "data")
    summary = f"signal {name!r} with data {as_json(data)}: a step waiting for it succeeds with the data"
    fields = {"action": action, "name": name, "data": form.get("data", "")}
    return Confirmation(action, title, summary, info.status, info.status, [], fields)


def _action(form: Form) -> str:
    action = form.get("action", "")
    if action not in TITLES:
        raise Refused(f"unknown action {action!r}", status=400)
    return action


def _step(step: str) -> str:
    if not step:
        raise Refused("choose a step", status=400)
    return step


def _signal_name(form: Form) -> str:
    name = form.get("name", "").strip()
    if not name:
        raise Refused("a signal needs a name", status=400)
    return name


def _json(form: Form, name: str) -> Any:
    """A JSON field of the form (empty means null)."""
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Refused(f"the {name} is not JSON: {exc}", status=400) from None


def _require(info: InstanceInfo, states: set[Status] | frozenset[Status], what: str) -> None:
    if info.status not in states:
        wanted = " or ".join(sorted(s.value for s in states))
        raise Refused(
            f"instance {info.instance_id} is {info.status.value}; {what} needs {wanted}", status=409
        )
