"""The broker contract and the records it exchanges with workers and users.

Every broker (in memory, SQL) keeps the same semantics, checked by one
shared contract test suite:

- a step is handed to one worker at a time, under a lease that expires at
  ``now + lease_seconds`` on the broker's clock; ``keep_alive`` extends it;
- a step whose lease expired is queued again, or FAILED with "worker lost"
  once it has been claimed ``max_attempts`` times;
- a report is accepted only from the worker holding the current lease of
  that attempt; anything else raises :class:`~fuseline.errors.LeaseLost`
  and changes nothing;
- successors are queued exactly once, when their dependencies are met (see
  :mod:`fuseline.broker.dag`), and an instance is finalized exactly once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import BrokerError, LeaseLost, ReportConflict
from ..states import FINAL_STATES, Status
from ..workflow.schema import WorkflowSchema
from .dispatching import Dispatch, as_dispatches

if TYPE_CHECKING:
    from .repairs import RepairAction, RepairPlan
from .schedules import ScheduleMethods

DEFAULT_LEASE_SECONDS = 30.0
#: Largest JSON result (UTF-8 bytes) a broker stores for one step.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StepAssignment:
    """A step handed to a worker: run it and report before ``expires_at``.

    ``payload`` is ``{"workflow_inputs": {...}, "results": {predecessor: value}}``
    with the results of exactly the predecessors this step consumes.
    """

    workflow_id: str
    instance_id: str
    step_name: str
    payload: dict[str, Any]
    assigned_at: datetime
    expires_at: datetime
    attempt: int = 1
    version: str = "1"

    @property
    def lease_seconds(self) -> float:
        return (self.expires_at - self.assigned_at).total_seconds()


@dataclass(frozen=True)
class StepReport:
    """What a worker reports for the step it holds.

    The first five fields match the worker guide's positional order.
    ``attempt`` (from the assignment) makes the report exact; without it the
    broker matches the attempt this worker currently holds. ``error`` is the
    failure text of a FAILED step. ``version`` (from the assignment) lets a
    broker take its fastest path without looking the instance up first.
    """

    workflow_id: str
    instance_id: str
    step_name: str
    state: Status | str
    result: Any = None
    attempt: int | None = None
    error: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class StepInfo:
    """A step as users see it. ``attempt`` counts its executions (claims given back unstarted
    are not); ``retries`` how many of them a RetryPolicy scheduled after a failure."""

    name: str
    state: Status
    attempt: int
    result: Any
    error: str | None
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    max_attempts: int = 3
    retries: int = 0
    #: A SubWorkflow step: the child instance it started (the latest one after a retry).
    child_instance_id: str | None = None


class Reason:
    """The codes of :attr:`StepExplanation.reason`, one per cause a step is not running (or is).

    Strings rather than an Enum, so clients compare them with plain text and
    new codes (issue 12's "waiting_for_signal") add no type to handle.
    """

    WAITING = "waiting"  #: PENDING: predecessors unfinished
    DELAYED = "delayed"  #: QUEUED, before the time a dispatch delay/at set
    RETRY_SCHEDULED = "retry_scheduled"  #: QUEUED, before the time of a policy retry
    SLEEPING = "sleeping"  #: a Sleep step, completed by the broker at its time
    CONCURRENCY_LIMIT = "concurrency_limit"  #: its step's ConcurrencyLimit is full
    WORKFLOW_CONCURRENCY_LIMIT = "workflow_concurrency_limit"  #: its workflow's limit is full
    RATE_LIMITED = "rate_limited"  #: its step's RateLimit window is full
    WAITING_FOR_SIGNAL = "waiting_for_signal"  #: a WaitFor step: no such signal yet
    WAITING_FOR_ITEMS = "waiting_for_items"  #: a Map: its items are running
    WAITING_FOR_CHILD = "waiting_for_child"  #: a SubWorkflow: its child instance is running
    NO_WORKER = "no_worker"  #: claimable, but no live worker serves its workflow and queue
    QUEUED = "queued"  #: claimable and served: waiting for a free worker
    RUNNING = "running"  #: leased to a worker


@dataclass(frozen=True)
class StepExplanation:
    """Why a step is where it is: ``reason`` is a short code (see ``Reason``), ``detail`` a
    sentence for people (names, counts, times)."""

    step: str
    state: Status
    reason: str
    detail: str


@dataclass(frozen=True)
class InstanceInfo:
    """An instance as users see it. ``result`` is the output step's result
    (a list when the workflow has several outputs)."""

    instance_id: str
    workflow_id: str
    version: str
    status: Status
    inputs: dict[str, Any]
    result: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    steps: list[StepInfo] = field(default_factory=list)
    key: str | None = None
    priority: int = 0
    #: A child instance: the instance and the SubWorkflow step that started it.
    parent_instance_id: str | None = None
    parent_step: str | None = None

    @property
    def children(self) -> list[str]:
        """The child instances its SubWorkflow steps started."""
        return [s.child_instance_id for s in self.steps if s.child_instance_id]

    @property
    def steps_done(self) -> int:
        return sum(1 for s in self.steps if s.state in FINAL_STATES)

    def step(self, name: str) -> StepInfo:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class InstancePage:
    """Which instances a listing returns: newest first, optionally of one status and one
    workflow, created in ``[since, until)``, with one idempotency ``key``; ``limit`` of them
    after skipping ``offset``, or (keyset pagination, as fast on page 1,000 as on page 1)
    those listed after instance ``after``."""

    status: Status | None = None
    workflow_id: str | None = None
    limit: int = 50
    offset: int = 0
    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None
    after: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    host: str
    pid: int
    workflows: list[str]
    started_at: datetime
    last_heartbeat: datetime
    stopped_at: datetime | None
    alive: bool
    current_steps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Lease:
    """A step a worker holds, as confirmed by ``keep_alive``."""

    instance_id: str
    step_name: str
    attempt: int
    expires_at: datetime


@dataclass(frozen=True)
class InstanceEvent:
    """One line of an instance's history (append-only)."""

    at: datetime
    kind: str
    step_name: str | None = None
    attempt: int | None = None
    worker_id: str | None = None
    detail: str | None = None


class Broker(ScheduleMethods, ABC):
    """Stores workflows, instances, step states, results and leases (and schedules: see
    :class:`~fuseline.broker.schedules.ScheduleMethods`)."""

    lease_seconds: float = DEFAULT_LEASE_SECONDS

    # -- workers ---------------------------------------------------------------------
    @abstractmethod
    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        """Store workflow definitions; SchemaConflict if one changed under the same id and version."""

    @abstractmethod
    def register_worker(
        self,
        schemas: Sequence[WorkflowSchema],
        *,
        host: str | None = None,
        pid: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> str:
        """Store the schemas (refusing a changed one: SchemaConflict); return a new worker id.

        The worker claims only steps of these workflows in ``queues`` (None:
        every queue its workflows use).
        """

    @abstractmethod
    def deregister_worker(self, worker_id: str) -> None:
        """Mark the worker stopped and queue again any step it still holds."""

    @abstractmethod
    def get_step(self, worker_id: str) -> StepAssignment | None:
        """Claim the queued step (of a workflow this worker registered) queued first, or None."""

    @abstractmethod
    def report_step(self, worker_id: str, report: StepReport) -> None:
        """Record the outcome of a step this worker holds and move the instance on.

        Raises LeaseLost if the worker no longer holds the step (nothing changes),
        UnknownInstance / UnknownStep for names that do not exist. Replaying the
        report already accepted is a no-op; replaying it with another outcome
        raises ReportConflict. A result that is not JSON (or is too large) fails
        the step with a message naming the step and the type.
        """

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        """``report_step``, then ``get_step``; brokers may do both in one round trip.

        If the report raises, nothing is claimed.
        """
        self.report_step(worker_id, report)
        return self.get_step(worker_id)

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        """Claim up to ``limit`` queued steps at once, in queue order (a worker's prefetch).

        Each is leased like a ``get_step`` claim, and the worker's heartbeats
        renew them all; steps it will not run after all go back through
        :meth:`release_steps`. Brokers may claim the batch in one round trip.
        """
        return claim_one_at_a_time(self.get_step, worker_id, limit)

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        """Report several steps this worker holds; brokers may commit them together.

        Returns, for each report in order, None when it was accepted, or the
        LeaseLost / ReportConflict it was refused with (nothing changed for
        that step). Any other error is raised, and the whole call may be
        sent again: an exact replay of an accepted report is accepted.
        """
        return report_one_at_a_time(self.report_step, worker_id, reports)

    @abstractmethod
    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        """Queue again steps this worker claimed but will not run; their attempt is refunded.

        Steps it no longer holds (reported, expired, taken over) are left alone.
        """

    @abstractmethod
    def keep_alive(self, worker_id: str) -> list[Lease]:
        """Heartbeat: extend the leases of the worker's running steps; return them."""

    def wait_for_work(self, timeout: float) -> bool:
        """Block until work may be ready (True) or ``timeout`` seconds pass (False).

        Idle workers call this between empty claims. Brokers that can announce
        new work (PostgreSQL's LISTEN/NOTIFY, an in-process condition) return
        early; the default simply sleeps, which is polling.
        """
        time.sleep(timeout)
        return False

    # -- instances -------------------------------------------------------------------
    def dispatch_workflow(
        self,
        schema: WorkflowSchema,
        inputs: Mapping[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        priority: int = 0,
    ) -> str:
        """Store the schema if new, create an instance, queue its first steps; return its id.

        ``delay`` seconds (on the broker's clock) or ``at`` a time: when its
        first steps become claimable. ``key``: at most one instance per key of
        the workflow; the same key with equal inputs returns the existing id,
        with other inputs raises KeyConflict. ``priority``: higher first among
        claimable steps. Bad options raise InvalidDispatch, writing nothing.
        """
        dispatch = Dispatch(inputs if inputs is not None else {}, delay, at, key, priority).checked()
        return self.dispatch_instances(schema, [dispatch])[0]

    def dispatch_many(
        self, schema: WorkflowSchema, inputs: Sequence[Mapping[str, Any] | Dispatch]
    ) -> list[str]:
        """Dispatch one instance per item: inputs, or a :class:`Dispatch` with its own options.

        Brokers may write them in one transaction.
        """
        return self.dispatch_instances(schema, as_dispatches(inputs))

    @abstractmethod
    def dispatch_instances(self, schema: WorkflowSchema, dispatches: Sequence[Dispatch]) -> list[str]:
        """Create the instances of checked dispatches; their ids, in order (see dispatch_workflow)."""

    @abstractmethod
    def explain_instance(self, instance_id: str) -> list[StepExplanation]:
        """Why each unfinished step of the instance is not running now (or that it is)."""

    @abstractmethod
    def get_instance(self, instance_id: str) -> InstanceInfo:
        """The instance with its steps; UnknownInstance if there is none."""

    def list_instances(
        self,
        status: Status | str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        key: str | None = None,
        after: str | None = None,
    ) -> list[InstanceInfo]:
        """Instances, newest first: one page of those matching the filters (see InstancePage);
        ``after`` an instance id lists those after it (UnknownInstance if there is none)."""
        wanted = Status(status) if status is not None else None
        page = InstancePage(
            wanted, workflow_id, max(0, int(limit)), max(0, int(offset)), since, until, key, after
        )
        return self.instances_page(page)

    @abstractmethod
    def instances_page(self, page: InstancePage) -> list[InstanceInfo]:
        """The instances ``page`` selects, newest first."""

    @abstractmethod
    def instance_events(self, instance_id: str) -> list[InstanceEvent]:
        """The instance's history, oldest first."""

    @abstractmethod
    def has_running_instances(self, workflows: Sequence[tuple[str, str]] | None = None) -> bool:
        """Whether any instance (of these ``(workflow_id, version)`` pairs) is still RUNNING with
        a step running or queued, not counting steps that wait for a signal or a child instance.

        A burst worker stops only when this is false: an empty queue alone
        does not mean the work is done while other workers hold steps; an
        instance waiting for a person's signal is not work a burst can finish.
        """

    @abstractmethod
    def list_workers(self) -> list[WorkerInfo]:
        """Registered workers, newest first."""

    @abstractmethod
    def cancel_instance(self, instance_id: str) -> InstanceInfo:
        """Cancel a RUNNING instance: unfinished steps end CANCELLED and late reports are refused."""

    @abstractmethod
    def retry_instance(
        self, instance_id: str, from_step: str | None = None, *, operator: str | None = None
    ) -> InstanceInfo:
        """Run a FAILED or CANCELLED instance again from its failed and cancelled steps; with
        ``from_step``, run that step and everything downstream of it again, on any finished
        instance (SUCCEEDED too), their results reset (a repair, recorded with ``operator``)."""

    def skip_step(self, instance_id: str, step: str, *, operator: str | None = None) -> InstanceInfo:
        """End ``step`` SKIPPED (not yet done, FAILED or CANCELLED); the DAG goes on as for a skip,
        and a FAILED or CANCELLED instance runs again."""
        raise NotImplementedError(f"{type(self).__name__} does not repair steps")

    def set_step_output(
        self, instance_id: str, step: str, result: Any, *, operator: str | None = None
    ) -> InstanceInfo:
        """End ``step`` SUCCEEDED with ``result`` (JSON, size-limited like any result); the DAG
        goes on, and a FAILED or CANCELLED instance runs again."""
        raise NotImplementedError(f"{type(self).__name__} does not repair steps")

    def plan_repair(
        self,
        instance_id: str,
        action: RepairAction,
        step: str,
        result: Any = None,
        *,
        operator: str | None = None,
    ) -> RepairPlan:
        """What a repair would change (``--dry-run``), changing nothing."""
        raise NotImplementedError(f"{type(self).__name__} does not repair steps")

    def signal(self, instance_id: str, name: str, data: Any = None) -> None:
        """Send signal ``name`` with JSON ``data`` to a RUNNING instance: a ``WaitFor(name)``
        step succeeds with ``data`` (now, or when it is reached). Each name is taken once per
        instance: a second raises ``SignalConflict``; an unknown instance ``UnknownInstance``,
        a finished one ``InvalidTransition``."""
        raise NotImplementedError(f"{type(self).__name__} does not take signals")

    def close(self) -> None:
        """Release connections; the broker is not used afterwards."""


def claim_one_at_a_time(
    get_step: Callable[[str], StepAssignment | None], worker_id: str, limit: int
) -> list[StepAssignment]:
    """``get_steps`` for brokers and clients without a batch claim: ``get_step`` until empty."""
    claimed: list[StepAssignment] = []
    while len(claimed) < limit:
        assignment = get_step(worker_id)
        if assignment is None:
            break
        claimed.append(assignment)
    return claimed


def report_one_at_a_time(
    report_step: Callable[[str, StepReport], None], worker_id: str, reports: Sequence[StepReport]
) -> list[BrokerError | None]:
    """``report_steps`` for brokers and clients without a batch report: each in turn."""
    outcomes: list[BrokerError | None] = []
    for report in reports:
        try:
            report_step(worker_id, report)
        except (LeaseLost, ReportConflict) as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)
    return outcomes
