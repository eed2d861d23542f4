"""A broker behind ``fuseline server``: workers and tools without database credentials.

:class:`HttpBrokerClient` is a whole :class:`~fuseline.broker.Broker` (it
passes the same contract suite as the brokers themselves) and a
:class:`~fuseline.clients.BrokerClient` for workers, so a ``Worker``, the
CLI and user code take it wherever they take a broker.

- Errors the server's broker raised are raised here as the same classes
  (``LeaseLost``, ``UnknownInstance``...), with the same messages.
- A server that cannot be reached, or answers 502/503/504, raises
  :class:`~fuseline.errors.ServiceUnavailable`, which workers wait out with
  backoff as they wait out a database restart. A report sent again after
  such an error is harmless: the broker accepts an exact replay, and refuses
  (``LeaseLost``) a report whose lease has passed to another worker.
- Results are encoded here, against the server's size limit, and a result
  that cannot be stored is sent as the refusal (the step fails with the same
  message a broker in this process would have given).
- Idle workers long-poll ``/api/v1/work``: an answer comes as soon as work
  is announced, and the generation it carries closes the gap between an
  empty claim and the next wait.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from typing import Any

import httpx

from ..broker import codec
from ..broker.base import (
    Broker,
    InstanceEvent,
    InstanceInfo,
    InstancePage,
    Lease,
    StepAssignment,
    StepExplanation,
    StepReport,
    WorkerInfo,
)
from ..broker.dispatching import Dispatch
from ..broker.repairs import RepairAction, RepairPlan
from ..broker.schedules import NewSchedule, ScheduleInfo
from ..errors import (
    AccessDenied,
    BrokerError,
    FuselineError,
    ResultNotSerializable,
    ResultTooLarge,
    ServiceUnavailable,
    WorkerExpired,
)
from ..service import wire
from ..states import Status
from ..workflow.schema import WorkflowSchema
from . import BrokerClient

TOKEN_ENV = "FUSELINE_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: Seconds a request may take before the server counts as unreachable (waits add their own).
DEFAULT_TIMEOUT = 30.0
_JSON = {"content-type": "application/json"}


class HttpBrokerClient(Broker, BrokerClient):
    """The broker of the ``fuseline server`` at ``url``, reached with ``token`` (default:
    ``FUSELINE_TOKEN``). Thread-safe: a worker's heartbeat thread shares it."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not url.startswith(("http://", "https://")):
            raise FuselineError(f"the server URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        self._info: dict[str, Any] | None = None
        self._generation: int | None = None
        #: Workers registered through this client, with the batch size each last claimed.
        self._limits: dict[str, int] = {}
        #: Steps a wait for work claimed, handed out by the worker's next claim.
        self._waited: dict[str, list[StepAssignment]] = {}

    def __repr__(self) -> str:  # never the token
        return f"HttpBrokerClient({self.url!r})"

    # -- transport ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, body: Any = None, content: str | None = None,
              params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:  # fmt: skip
        """One request; the answer's JSON, or the error it describes raised here."""
        options: dict[str, Any] = {"params": params}
        if content is not None:
            options.update(content=content.encode("utf-8"), headers=_JSON)
        elif body is not None:
            options.update(json=body)
        if timeout is not None:
            options["timeout"] = timeout
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"the fuseline server at {self.url} cannot be reached: {exc}") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response.json()

    def _error(self, response: httpx.Response) -> FuselineError:
        try:
            described = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            described = None
        status = response.status_code
        if status in (502, 503, 504) and (described is None or described.get("type") == "HTTPError"):
            return ServiceUnavailable(f"the fuseline server at {self.url} answered {status}")
        if described is None:
            return FuselineError(
                f"the fuseline server at {self.url} answered {status}: {response.text[:200]}"
            )
        error = wire.decode_error(described)
        if status in (401, 403) and not isinstance(error, AccessDenied):
            return AccessDenied(str(error), status)
        return error

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._call("GET", "/info")
        return self._info

    @property  # type: ignore[override]
    def lease_seconds(self) -> float:
        return float(self.info["lease_seconds"])

    @property
    def max_result_bytes(self) -> int:
        return int(self.info["max_result_bytes"])

    # -- workers ------------------------------------------------------------------------------
    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        self._call("POST", "/workflows", body={"schemas": [s.to_dict() for s in schemas]})

    def register_worker(
        self,
        schemas: Sequence[WorkflowSchema],
        *,
        host: str | None = None,
        pid: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> str:
        body = {
            "schemas": [s.to_dict() for s in schemas],
            "host": host if host is not None else socket.gethostname(),
            "pid": pid if pid is not None else os.getpid(),
            "queues": list(queues) if queues is not None else None,
        }
        worker_id = str(self._call("POST", "/workers", body=body)["worker_id"])
        self._limits[worker_id] = 1
        return worker_id

    def deregister_worker(self, worker_id: str) -> None:
        self._limits.pop(worker_id, None)
        self._waited.pop(worker_id, None)  # the server queues them again with the worker's other steps
        self._call("DELETE", f"/workers/{worker_id}")

    def get_step(self, worker_id: str) -> StepAssignment | None:
        claimed = self.get_steps(worker_id, 1)
        return claimed[0] if claimed else None

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        limit = max(1, int(limit))
        if worker_id in self._limits:
            self._limits[worker_id] = limit
        waited = self._waited.get(worker_id)
        if waited:
            taken, self._waited[worker_id] = waited[:limit], waited[limit:]
            return taken
        try:
            answer = self._call("POST", f"/workers/{worker_id}/claim", body={"limit": limit})
        except WorkerExpired:
            self._limits.pop(worker_id, None)  # it registers again under a new id
            raise
        return wire.decode_list(StepAssignment, answer["assignments"])

    def report_step(self, worker_id: str, report: StepReport) -> None:
        self._call("POST", f"/workers/{worker_id}/report", content=self._report_json(report))

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        content = '{"reports":[' + ",".join(self._report_json(r) for r in reports) + "]}"
        outcomes = self._call("POST", f"/workers/{worker_id}/reports", content=content)["outcomes"]
        return [wire.decode_error(o) if o is not None else None for o in outcomes]  # type: ignore[misc]

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        answer = self._call(
            "POST", f"/workers/{worker_id}/report-and-claim", content=self._report_json(report)
        )
        data = answer["assignment"]
        return wire.decode(StepAssignment, data) if data is not None else None

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        if assignments:
            self._call(
                "POST", f"/workers/{worker_id}/release", body={"assignments": wire.encode(list(assignments))}
            )

    def keep_alive(self, worker_id: str) -> list[Lease]:
        return wire.decode_list(Lease, self._call("POST", f"/workers/{worker_id}/heartbeat")["leases"])

    def wait_for_work(self, timeout: float) -> bool:
        """Wait until work may be ready. A client serving one worker claims *while* it waits
        (one round trip, and the server wakes one waiter per step instead of all of them): the
        steps it gets go to that worker's next claim. Otherwise, a plain wait."""
        if len(self._limits) == 1:
            worker_id, limit = next(iter(self._limits.items()))
            return self._claim_waiting(worker_id, limit, timeout)
        params: dict[str, Any] = {"timeout": max(0.0, min(timeout, 30.0))}
        if self._generation is not None:
            params["since"] = self._generation
        answer = self._call("GET", "/work", params=params, timeout=timeout + DEFAULT_TIMEOUT)
        self._generation = int(answer["generation"])
        return bool(answer["work"])

    def _claim_waiting(self, worker_id: str, limit: int, timeout: float) -> bool:
        body = {"limit": limit, "wait": max(0.0, min(timeout, 30.0))}
        try:
            answer = self._call(
                "POST", f"/workers/{worker_id}/claim", body=body, timeout=timeout + DEFAULT_TIMEOUT
            )
        except BrokerError:  # listed dead, say: the worker's own claim meets it and deals with it
            return True
        claimed = wire.decode_list(StepAssignment, answer["assignments"])
        if claimed:
            self._waited.setdefault(worker_id, []).extend(claimed)
        return bool(claimed)

    def has_running_instances(self, workflows: Sequence[tuple[str, str]] | None = None) -> bool:
        pairs = [list(p) for p in workflows] if workflows is not None else None
        return bool(self._call("POST", "/running", body={"workflows": pairs})["running"])

    def _report_json(self, report: StepReport) -> str:
        """The report as JSON text, its result encoded once, here, against the server's limit."""
        state = report.state.value if isinstance(report.state, Status) else str(report.state)
        fields: dict[str, Any] = {
            "workflow_id": report.workflow_id,
            "instance_id": report.instance_id,
            "step_name": report.step_name,
            "state": state,
            "attempt": report.attempt,
            "error": report.error,
            "version": report.version,
        }
        result_text = "null"
        if state == Status.SUCCEEDED.value:
            try:
                result_text = codec.encode_result(report.step_name, report.result, self.max_result_bytes)
            except (ResultNotSerializable, ResultTooLarge) as exc:
                fields["refused"] = wire.encode_error(exc)
        head = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        return head[:-1] + ',"result":' + result_text + "}"

    # -- instances ----------------------------------------------------------------------------
    def dispatch_instances(self, schema: WorkflowSchema, dispatches: Sequence[Dispatch]) -> list[str]:
        for dispatch in dispatches:
            codec.encode_inputs(dispatch.inputs)  # InvalidInputs here, as a broker in this process raises
        body = {"schema": schema.to_dict(), "dispatches": [wire.encode_dispatch(d) for d in dispatches]}
        return list(self._call("POST", "/instances", body=body)["instance_ids"])

    def explain_instance(self, instance_id: str) -> list[StepExplanation]:
        return wire.decode_list(
            StepExplanation, self._call("GET", f"/instances/{_id(instance_id)}/explain")["steps"]
        )

    def get_instance(self, instance_id: str) -> InstanceInfo:
        return wire.decode(InstanceInfo, self._call("GET", f"/instances/{_id(instance_id)}"))

    def instances_page(self, page: InstancePage) -> list[InstanceInfo]:
        params = {
            name: (value.isoformat() if hasattr(value, "isoformat") else getattr(value, "value", value))
            for name, value in wire.encode_fields(page).items()
            if value is not None
        }
        return wire.decode_list(InstanceInfo, self._call("GET", "/instances", params=params)["instances"])

    def instance_events(self, instance_id: str) -> list[InstanceEvent]:
        return wire.decode_list(
            InstanceEvent, self._call("GET", f"/instances/{_id(instance_id)}/events")["events"]
        )

    def list_workers(self) -> list[WorkerInfo]:
        return wire.decode_list(WorkerInfo, self._call("GET", "/workers")["workers"])

    def cancel_instance(self, instance_id: str) -> InstanceInfo:
        return wire.decode(InstanceInfo, self._call("POST", f"/instances/{_id(instance_id)}/cancel"))

    def retry_instance(
        self, instance_id: str, from_step: str | None = None, *, operator: str | None = None
    ) -> InstanceInfo:
        body = {"from_step": from_step, "operator": operator}
        return wire.decode(
            InstanceInfo, self._call("POST", f"/instances/{_id(instance_id)}/retry", body=body)
        )

    def skip_step(self, instance_id: str, step: str, *, operator: str | None = None) -> InstanceInfo:
        path = f"/instances/{_id(instance_id)}/steps/{_id(step)}/skip"
        return wire.decode(InstanceInfo, self._call("POST", path, body={"operator": operator}))

    def set_step_output(
        self, instance_id: str, step: str, result: Any, *, operator: str | None = None
    ) -> InstanceInfo:
        path = f"/instances/{_id(instance_id)}/steps/{_id(step)}/output"
        codec.encode_result(step, result, self.max_result_bytes)  # refused here as a broker refuses it
        return wire.decode(
            InstanceInfo, self._call("POST", path, body={"result": result, "operator": operator})
        )

    def plan_repair(
        self,
        instance_id: str,
        action: RepairAction,
        step: str,
        result: Any = None,
        *,
        operator: str | None = None,
    ) -> RepairPlan:
        if RepairAction(action) is RepairAction.SET_OUTPUT:
            codec.encode_result(step, result, self.max_result_bytes)
        body = {"action": RepairAction(action).value, "step": step, "result": result, "operator": operator}
        return wire.decode(RepairPlan, self._call("POST", f"/instances/{_id(instance_id)}/plan", body=body))

    def signal(self, instance_id: str, name: str, data: Any = None) -> None:
        self._call("POST", f"/instances/{_id(instance_id)}/signals", body={"name": name, "data": data})

    # -- schedules ----------------------------------------------------------------------------
    def store_schedule(self, schedule: NewSchedule) -> ScheduleInfo:
        spec = schedule.spec
        body = {
            "name": schedule.name,
            "schema": schedule.schema.to_dict(),
            "cron": spec.cron,
            "every": spec.every,
            "timezone": spec.timezone,
            "inputs": schedule.inputs,
        }
        return wire.decode(ScheduleInfo, self._call("POST", "/schedules", body=body))

    def list_schedules(self) -> list[ScheduleInfo]:
        return wire.decode_list(ScheduleInfo, self._call("GET", "/schedules")["schedules"])

    def pause_schedule(self, name: str) -> ScheduleInfo:
        return wire.decode(ScheduleInfo, self._call("POST", f"/schedules/{_id(name)}/pause"))

    def resume_schedule(self, name: str) -> ScheduleInfo:
        return wire.decode(ScheduleInfo, self._call("POST", f"/schedules/{_id(name)}/resume"))

    def remove_schedule(self, name: str) -> None:
        self._call("DELETE", f"/schedules/{_id(name)}")

    def fire_schedules(self) -> list[str]:
        return list(self._call("POST", "/schedules/fire")["instance_ids"])

    def close(self) -> None:
        self._http.close()


def _id(text: str) -> str:
    """A path segment: ids and names are user text, quoted so '/' or '?' cannot change the route."""
    from urllib.parse import quote

    return quote(str(text), safe="")
