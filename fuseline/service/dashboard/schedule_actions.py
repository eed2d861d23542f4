"""Operator actions on schedules: pause, resume and remove (remove after a confirmation).

The schedule's name travels in the form, not the path: names may hold ``/`` (a schedule is
named after its workflow id by default). Every route needs an operator's session and the
session's CSRF token; a viewer is refused with a 403 page. Pausing and resuming are undone
by each other, so they apply at once; removing cannot be undone, so its button leads to a
page that says what goes and what stays, whose Remove button does it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...broker.schedules import ScheduleInfo
from ..context import context_of
from .access import Form, operator_form
from .render import PageRoute, Refused, page

router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _name(form: Form) -> str:
    name = form.get("name", "")
    if not name:
        raise Refused("choose a schedule", status=400)
    return name


def _back() -> Response:
    return RedirectResponse("/schedules", status_code=303)


@router.post("/schedules/pause")
def pause(request: Request, form: Form = Depends(operator_form)) -> Response:  # noqa: B008 (FastAPI's way)
    context_of(request).broker.pause_schedule(_name(form))
    return _back()


@router.post("/schedules/resume")
def resume(request: Request, form: Form = Depends(operator_form)) -> Response:  # noqa: B008
    context_of(request).broker.resume_schedule(_name(form))
    return _back()


@router.post("/schedules/remove/confirm")
def confirm_remove(request: Request, form: Form = Depends(operator_form)) -> Response:  # noqa: B008
    """What removing the schedule means, with the button that does it; nothing changes yet."""
    name = _name(form)
    schedule = _find(request, name)
    return page(request, "schedule_remove.html", schedule=schedule)


@router.post("/schedules/remove")
def remove(request: Request, form: Form = Depends(operator_form)) -> Response:  # noqa: B008
    context_of(request).broker.remove_schedule(_name(form))
    return _back()


def _find(request: Request, name: str) -> ScheduleInfo:
    for schedule in context_of(request).broker.list_schedules():
        if schedule.name == name:
            return schedule
    raise Refused(f"there is no schedule named {name!r}", status=404)
