"""The dashboard's pages: instances, one instance, workers, schedules, and what they poll.

Every route is a plain ``def``: FastAPI runs it on its thread pool, where a broker call
may block. Listings page by keyset (``after`` the last instance shown), never by offset,
so page 2,000 of 100,000 instances costs what page 1 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ...broker.base import InstanceEvent, InstanceInfo, InstancePage, StepInfo
from ...broker.scheduling import item_base
from ...states import INSTANCE_STATES, Status
from ..context import context_of
from .access import Viewer, reads_of, signed_in
from .graph import layout, shape_of
from .reads import STATUS_ORDER
from .render import PageRoute, Refused, page

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
#: What an instance page lists at most: the newest events, the first items of each Map (a Map of
#: 10,000 items keeps its full count in the graph, but the page stays readable and quick).
TIMELINE = 500
ITEMS_SHOWN = 100
EVENTS_PER_STEP = 50


@dataclass
class StepGroup:
    """A step of the definition with its Map items (``step[i]``) and its history."""

    step: StepInfo
    items: list[StepInfo] = field(default_factory=list)
    events: list[InstanceEvent] = field(default_factory=list)
    more_items: int = 0


def _broker(request: Request) -> Any:
    return context_of(request).broker


@router.get("/")
def home(_: Viewer = Depends(signed_in)) -> Response:  # noqa: B008 (FastAPI's way)
    return RedirectResponse("/instances", status_code=303)


@router.get("/instances")
def instances(
    request: Request,
    status: str | None = None,
    workflow: str | None = None,
    key: str | None = None,
    after: str | None = None,
    _: Viewer = Depends(signed_in),  # noqa: B008
) -> Response:
    wanted = _status(status)
    selected = InstancePage(wanted, workflow or None, PAGE_SIZE + 1, 0, key=key or None, after=after or None)
    rows = _broker(request).instances_page(selected)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    filters = {"status": wanted.value if wanted else "", "workflow": workflow or "", "key": key or ""}
    return page(
        request,
        "instances.html",
        rows=rows,
        counts=reads_of(request).counts(workflow or None),
        filters=filters,
        statuses=STATUS_ORDER,
        next_after=rows[-1].instance_id if more and rows else None,
        paged=bool(after),
    )


@router.get("/counts.json")
def counts(request: Request, workflow: str | None = None, _: Viewer = Depends(signed_in)) -> Response:  # noqa: B008
    """Instances per status, for the live counters of the instances page."""
    found = reads_of(request).counts(workflow or None)
    return JSONResponse({status.value: count for status, count in found.items()})


@router.get("/instances/{instance_id}")
def instance(request: Request, instance_id: str, viewer: Viewer = Depends(signed_in)) -> Response:  # noqa: B008
    broker = _broker(request)
    info: InstanceInfo = broker.get_instance(instance_id)
    events = broker.instance_events(instance_id)
    explained = broker.explain_instance(instance_id) if info.status is Status.RUNNING else []
    schema = reads_of(request).definition(info.workflow_id, info.version)
    graph = layout(schema, info.steps)
    groups = _groups(info, events, [n.name for n in graph.nodes])
    return page(
        request,
        "instance.html",
        info=info,
        graph=graph,
        groups=groups,
        events=events[-TIMELINE:],
        events_left_out=max(0, len(events) - TIMELINE),
        explained=explained,
        step_names=[g.step.name for g in groups] + [i.name for g in groups for i in g.items],
        can_change=viewer.can_change,
    )


@router.get("/instances/{instance_id}/graph")
def graph(request: Request, instance_id: str, _: Viewer = Depends(signed_in)) -> Response:  # noqa: B008
    """The DAG alone, for the live refresh once steps or items appeared."""
    info: InstanceInfo = _broker(request).get_instance(instance_id)
    schema = reads_of(request).definition(info.workflow_id, info.version)
    return page(request, "graph.html", info=info, graph=layout(schema, info.steps))


@router.get("/instances/{instance_id}/live.json")
def live(request: Request, instance_id: str, _: Viewer = Depends(signed_in)) -> Response:  # noqa: B008
    """What the instance page polls: the status and each step's state."""
    info: InstanceInfo = _broker(request).get_instance(instance_id)
    return JSONResponse(
        {
            "status": info.status.value,
            "shape": shape_of(info.steps),
            "steps": {s.name: s.state.value for s in info.steps},
            "done": info.steps_done,
            "total": len(info.steps),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/workers")
def workers(request: Request, _: Viewer = Depends(signed_in)) -> Response:  # noqa: B008
    return page(request, "workers.html", workers=_broker(request).list_workers())


@router.get("/schedules")
def schedules(request: Request, _: Viewer = Depends(signed_in)) -> Response:  # noqa: B008
    return page(request, "schedules.html", schedules=_broker(request).list_schedules())


def _status(text: str | None) -> Status | None:
    if not text:
        return None
    try:
        status = Status(text.upper())
    except ValueError:
        status = None
    if status not in INSTANCE_STATES:
        choices = ", ".join(s.value for s in STATUS_ORDER)
        raise Refused(f"{text!r} is not an instance status: choose one of {choices}", status=400)
    return status


def _groups(info: InstanceInfo, events: list[InstanceEvent], order: list[str]) -> list[StepGroup]:
    """The instance's steps in the definition's order, items under their Map step."""
    groups = {s.name: StepGroup(s) for s in info.steps if item_base(s.name) == s.name}
    for step in info.steps:
        base = item_base(step.name)
        if base != step.name and base in groups:
            group = groups[base]
            if len(group.items) < ITEMS_SHOWN:
                group.items.append(step)
            else:
                group.more_items += 1
    for event in events:
        if event.step_name is not None:
            base = item_base(event.step_name)
            if base in groups:
                groups[base].events.append(event)
    for group in groups.values():
        group.events = group.events[-EVENTS_PER_STEP:]
    ranked = {name: index for index, name in enumerate(order)}
    return sorted(groups.values(), key=lambda g: ranked.get(g.step.name, len(ranked)))
