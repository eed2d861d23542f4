"""The worker API: what :class:`~fuseline.clients.HttpBrokerClient` calls for a worker.

Each route is one broker call, run on the server's thread pool (the broker
blocks on its database), except the wait for work, which is a long poll on
the process's :class:`~.hub.WorkHub` and holds neither a thread nor a
connection while it waits.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..broker.base import StepAssignment, StepReport
from ..broker.codec import RefusedResult
from ..errors import BrokerError
from . import wire
from .auth import worker_api
from .context import context_of

router = APIRouter(prefix="/api/v1", tags=["worker"], dependencies=[Depends(worker_api)])

#: The longest a wait for work is held open; clients ask for less.
MAX_WAIT_SECONDS = 30.0


class RegisterBody(BaseModel):
    schemas: list[dict[str, Any]] = Field(description="WorkflowSchema.to_dict() of each workflow")
    host: str | None = None
    pid: int | None = None
    queues: list[str] | None = None


class WorkflowsBody(BaseModel):
    schemas: list[dict[str, Any]]


class ClaimBody(BaseModel):
    limit: int = Field(1, ge=1, le=1000)
    wait: float = Field(
        0.0, ge=0, le=MAX_WAIT_SECONDS, description="when nothing is ready, wait this long for work"
    )


class ReportBody(BaseModel):
    workflow_id: str
    instance_id: str
    step_name: str
    state: str
    result: Any = None
    attempt: int | None = None
    error: str | None = None
    version: str | None = None
    refused: dict[str, Any] | None = Field(
        None, description="the error the worker met encoding its result, sent instead of it"
    )

    def report(self) -> StepReport:
        result = RefusedResult(wire.decode_error(self.refused)) if self.refused else self.result  # type: ignore[arg-type]
        return StepReport(
            self.workflow_id, self.instance_id, self.step_name, self.state, result,
            self.attempt, self.error, self.version,
        )  # fmt: skip


class ReportsBody(BaseModel):
    reports: list[ReportBody]


class ReleaseBody(BaseModel):
    assignments: list[dict[str, Any]]


class RunningBody(BaseModel):
    workflows: list[tuple[str, str]] | None = None


def answer(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status)


def _assignment(assignment: StepAssignment | None) -> Any:
    return wire.encode(assignment) if assignment is not None else None


@router.get("/info", summary="The broker's lease length and result size limit")
def info(request: Request) -> JSONResponse:
    broker = context_of(request).broker
    return answer({"lease_seconds": broker.lease_seconds, "max_result_bytes": broker.max_result_bytes})


@router.post("/workflows", summary="Store workflow definitions")
def register_workflows(body: WorkflowsBody, request: Request) -> JSONResponse:
    context_of(request).broker.register_workflows([wire.decode_schema(s) for s in body.schemas])
    return answer({})


@router.post("/workers", summary="Register a worker; returns its id")
def register_worker(body: RegisterBody, request: Request) -> JSONResponse:
    worker_id = context_of(request).broker.register_worker(
        [wire.decode_schema(s) for s in body.schemas], host=body.host, pid=body.pid, queues=body.queues
    )
    return answer({"worker_id": worker_id})


@router.delete("/workers/{worker_id}", summary="Deregister: held steps are queued again at once")
def deregister_worker(worker_id: str, request: Request) -> JSONResponse:
    context_of(request).broker.deregister_worker(worker_id)
    return answer({})


@router.post("/workers/{worker_id}/claim", summary="Claim up to `limit` steps, waiting up to `wait` s")
async def claim(worker_id: str, body: ClaimBody, request: Request) -> JSONResponse:
    context = context_of(request)
    broker = context.broker

    def once() -> list[StepAssignment]:
        return broker.get_steps(worker_id, body.limit) if body.limit > 1 else _one(broker.get_step(worker_id))

    if body.wait > 0:  # a long poll: holds no thread and no connection while it waits
        claimed = await context.hub.claim_or_wait(lambda: run_in_threadpool(once), body.wait)
    else:
        claimed = await run_in_threadpool(once)
    return answer({"assignments": [wire.encode(a) for a in claimed]})


def _one(assignment: StepAssignment | None) -> list[StepAssignment]:
    return [assignment] if assignment is not None else []


@router.post("/workers/{worker_id}/report", summary="Report the outcome of a held step")
def report(worker_id: str, body: ReportBody, request: Request) -> JSONResponse:
    context_of(request).broker.report_step(worker_id, body.report())
    return answer({})


@router.post("/workers/{worker_id}/reports", summary="Report several held steps")
def reports(worker_id: str, body: ReportsBody, request: Request) -> JSONResponse:
    outcomes = context_of(request).broker.report_steps(worker_id, [r.report() for r in body.reports])
    return answer({"outcomes": [wire.encode_error(o) if o is not None else None for o in outcomes]})


@router.post("/workers/{worker_id}/report-and-claim", summary="Report, then claim the next step")
def report_and_claim(worker_id: str, body: ReportBody, request: Request) -> JSONResponse:
    assignment = context_of(request).broker.report_and_claim(worker_id, body.report())
    return answer({"assignment": _assignment(assignment)})


@router.post("/workers/{worker_id}/heartbeat", summary="Extend the worker's leases")
def heartbeat(worker_id: str, request: Request) -> JSONResponse:
    leases = context_of(request).broker.keep_alive(worker_id)
    return answer({"leases": [wire.encode(lease) for lease in leases]})


@router.post("/workers/{worker_id}/release", summary="Give back claimed steps that will not run")
def release(worker_id: str, body: ReleaseBody, request: Request) -> JSONResponse:
    try:
        assignments = [wire.decode(StepAssignment, a) for a in body.assignments]
    except (TypeError, KeyError, ValueError, AttributeError) as exc:  # a 400, not a 500
        raise BrokerError(f"an assignment to release is malformed: {exc}") from None
    context_of(request).broker.release_steps(worker_id, assignments)
    return answer({})


@router.post("/running", summary="Whether instances (of these workflows) still have work running")
def running(body: RunningBody, request: Request) -> JSONResponse:
    pairs = [tuple(p) for p in body.workflows] if body.workflows is not None else None
    return answer({"running": context_of(request).broker.has_running_instances(pairs)})  # type: ignore[arg-type]


@router.get("/work", summary="Long poll: answers when work is announced, or after `timeout`")
async def wait_for_work(
    request: Request,
    since: int | None = Query(None, description="the generation the last answer gave"),
    timeout: float = Query(1.0, ge=0, le=MAX_WAIT_SECONDS),
) -> JSONResponse:
    hub = context_of(request).hub
    announced = await hub.wait(since, timeout)
    return answer({"work": announced, "generation": hub.generation})
