"""The control API: submit, read and change instances, workers and schedules.

Reads need the viewer or operator role; changes the operator role. Repairs
are recorded under the token's name (the operator), not the server's OS user.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..broker.base import InstancePage
from ..broker.repairs import RepairAction
from ..broker.schedules import NewSchedule, ScheduleSpec
from ..states import Status
from . import wire
from .api_worker import answer
from .auth import changer, reader
from .context import context_of
from .tokens import Identity

router = APIRouter(prefix="/api/v1", tags=["control"])

MAX_PAGE = 1000


class DispatchBody(BaseModel):
    inputs: dict[str, Any] = Field(default_factory=dict)
    delay: float | None = None
    at: datetime | None = None
    key: str | None = None
    priority: int = 0


class SubmitBody(BaseModel):
    schema_: dict[str, Any] = Field(alias="schema", description="WorkflowSchema.to_dict()")
    dispatches: list[DispatchBody] = Field(min_length=1, max_length=10_000)


#: Who a repair is recorded under: the name the caller gives (a person acting with a shared
#: operator token), else the token's own name.
Operator = Field(None, description="recorded as the operator; default: the token's name")


class RetryBody(BaseModel):
    from_step: str | None = None
    operator: str | None = Operator


class RepairBody(BaseModel):
    operator: str | None = Operator


class OutputBody(BaseModel):
    result: Any = None
    operator: str | None = Operator


class PlanBody(BaseModel):
    action: RepairAction
    step: str
    result: Any = None
    operator: str | None = Operator


class SignalBody(BaseModel):
    name: str
    data: Any = None


class ScheduleBody(BaseModel):
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"
    inputs: str = "{}"


def _broker(request: Request) -> Any:
    return context_of(request).broker


# -- instances ------------------------------------------------------------------------------------
@router.post("/instances", summary="Dispatch instances of a workflow; their ids in order")
def submit(body: SubmitBody, request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    schema = wire.decode_schema(body.schema_)
    dispatches = [wire.decode_dispatch(d.model_dump()).checked() for d in body.dispatches]
    return answer({"instance_ids": _broker(request).dispatch_instances(schema, dispatches)}, 201)


@router.get("/instances", summary="List instances, newest first")
def list_instances(
    request: Request,
    status: Status | None = None,
    workflow_id: str | None = None,
    limit: int = Query(50, ge=0, le=MAX_PAGE),
    offset: int = Query(0, ge=0),
    since: datetime | None = None,
    until: datetime | None = None,
    key: str | None = None,
    after: str | None = None,
    _: Identity = Depends(reader),  # noqa: B008
) -> JSONResponse:
    page = InstancePage(status, workflow_id, limit, offset, since, until, key, after)
    return answer({"instances": wire.encode(_broker(request).instances_page(page))})


@router.get("/instances/{instance_id}", summary="One instance with its steps")
def show(instance_id: str, request: Request, _: Identity = Depends(reader)) -> JSONResponse:  # noqa: B008
    return answer(wire.encode(_broker(request).get_instance(instance_id)))


@router.get("/instances/{instance_id}/explain", summary="Why each unfinished step is where it is")
def explain(instance_id: str, request: Request, _: Identity = Depends(reader)) -> JSONResponse:  # noqa: B008
    return answer({"steps": wire.encode(_broker(request).explain_instance(instance_id))})


@router.get("/instances/{instance_id}/events", summary="The instance's history, oldest first")
def events(instance_id: str, request: Request, _: Identity = Depends(reader)) -> JSONResponse:  # noqa: B008
    return answer({"events": wire.encode(_broker(request).instance_events(instance_id))})


@router.post("/instances/{instance_id}/cancel", summary="Cancel a running instance")
def cancel(instance_id: str, request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    return answer(wire.encode(_broker(request).cancel_instance(instance_id)))


@router.post("/instances/{instance_id}/retry", summary="Retry a finished instance (from a step)")
def retry(
    instance_id: str,
    body: RetryBody,
    request: Request,
    who: Identity = Depends(changer),  # noqa: B008
) -> JSONResponse:
    info = _broker(request).retry_instance(instance_id, body.from_step, operator=body.operator or who.name)
    return answer(wire.encode(info))


@router.post("/instances/{instance_id}/steps/{step:path}/skip", summary="End a step SKIPPED")
def skip(
    instance_id: str,
    step: str,
    body: RepairBody,
    request: Request,
    who: Identity = Depends(changer),  # noqa: B008
) -> JSONResponse:
    info = _broker(request).skip_step(instance_id, step, operator=body.operator or who.name)
    return answer(wire.encode(info))


@router.post(
    "/instances/{instance_id}/steps/{step:path}/output", summary="End a step SUCCEEDED with a result"
)
def set_output(
    instance_id: str,
    step: str,
    body: OutputBody,
    request: Request,
    who: Identity = Depends(changer),  # noqa: B008
) -> JSONResponse:
    info = _broker(request).set_step_output(
        instance_id, step, body.result, operator=body.operator or who.name
    )
    return answer(wire.encode(info))


@router.post("/instances/{instance_id}/plan", summary="What a repair would change (a dry run)")
def plan(
    instance_id: str,
    body: PlanBody,
    request: Request,
    who: Identity = Depends(changer),  # noqa: B008
) -> JSONResponse:
    operator = body.operator or who.name
    planned = _broker(request).plan_repair(
        instance_id, body.action, body.step, body.result, operator=operator
    )
    return answer(wire.encode(planned))


@router.post("/instances/{instance_id}/signals", summary="Send a signal to a running instance")
def signal(
    instance_id: str,
    body: SignalBody,
    request: Request,
    _: Identity = Depends(changer),  # noqa: B008
) -> JSONResponse:
    _broker(request).signal(instance_id, body.name, body.data)
    return answer({})


@router.get("/workers", summary="Registered workers, newest first")
def workers(request: Request, _: Identity = Depends(reader)) -> JSONResponse:  # noqa: B008
    return answer({"workers": wire.encode(_broker(request).list_workers())})


# Step and schedule names are free text, '/' included (a schedule is named after its workflow
# id by default), so they are matched as ``:path`` (the client quotes them, and the server
# decodes '%2F' before routing). Instance and worker ids are UUIDs: one segment each.


# -- schedules ------------------------------------------------------------------------------------
@router.post("/schedules", summary="Add a schedule (checked by the client and again here)")
def add_schedule(body: ScheduleBody, request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    spec = ScheduleSpec.of(cron=body.cron, every=body.every, timezone=body.timezone if body.cron else None)
    wire.check_json_text(body.inputs)
    schedule = NewSchedule(body.name, wire.decode_schema(body.schema_), spec, body.inputs)
    return answer(wire.encode(_broker(request).store_schedule(schedule)), 201)


@router.get("/schedules", summary="Every schedule, by name")
def list_schedules(request: Request, _: Identity = Depends(reader)) -> JSONResponse:  # noqa: B008
    return answer({"schedules": wire.encode(_broker(request).list_schedules())})


@router.post("/schedules/{name:path}/pause", summary="Stop firing a schedule")
def pause(name: str, request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    return answer(wire.encode(_broker(request).pause_schedule(name)))


@router.post("/schedules/{name:path}/resume", summary="Fire a schedule again from its next tick")
def resume(name: str, request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    return answer(wire.encode(_broker(request).resume_schedule(name)))


@router.delete("/schedules/{name:path}", summary="Delete a schedule (its instances stay)")
def remove(name: str, request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    _broker(request).remove_schedule(name)
    return answer({})


@router.post("/schedules/fire", summary="Fire the due ticks now (workers' claims do it anyway)")
def fire(request: Request, _: Identity = Depends(changer)) -> JSONResponse:  # noqa: B008
    return answer({"instance_ids": _broker(request).fire_schedules()})
