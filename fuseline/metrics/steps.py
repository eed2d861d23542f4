"""``WorkerMetrics``: what a worker does, counted for Prometheus.

Every step a worker starts ends in exactly one outcome of
``fuseline_steps_total``, decided when the broker answers its report:

- ``succeeded`` / ``skipped``: the report was accepted (a step may skip
  itself, by a condition);
- ``failed``: a failure was accepted and its ``RetryPolicy`` had no retry
  left, so the step is FAILED;
- ``retried``: a failure was accepted and the broker queued the step again
  for a retry;
- ``lost``: the result was not recorded: the lease was lost while the step
  ran (the heartbeat saw it), or the broker refused the report (lease
  expired, instance cancelled or repaired meanwhile, worker listed dead).

So ``started`` minus the five others is the steps in hand (or stopped at
once by a second signal). Whether a failure
is retried is the broker's decision (it keeps the retry count); the worker
knows the step's ``RetryPolicy`` and the attempt it ran, which is one more
than the claims before it, and every retry is a claim. An attempt at most
``max_retries`` is therefore always retried. Past that, the broker may
still retry when earlier claims were not retries (a lease that ran out, a
step given back, a repair that reset the budget); such a failure counts as
``failed``. A result the broker refuses as too large or not JSON fails the
step there, and counts here as ``succeeded``.

Map items are labelled with their map's step name (``square[3]`` ->
``square``), so a series never exists per item.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from ..broker.base import Lease, StepAssignment, StepReport
from ..broker.scheduling import item_base, scheduling_of
from ..clients import BrokerClient
from ..engines.assignment import Execution
from ..engines.observer import WorkerObserver
from ..errors import BrokerError, LeaseLost, ReportConflict, WorkerExpired
from ..states import Status
from ..workflow.schema import WorkflowSchema

STARTED, SUCCEEDED, SKIPPED, FAILED, RETRIED, LOST = (
    "started", "succeeded", "skipped", "failed", "retried", "lost",
)  # fmt: skip
#: Step durations: from milliseconds to an hour.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Claims and reports: database round trips, from half a millisecond to seconds (an outage).
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class StepFamilies:
    """The metrics themselves, created once per registry (every worker in a process shares them)."""

    steps: Counter
    durations: Histogram
    claims: Histogram
    reports: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StepFamilies:
        return cls(
            steps=Counter(
                "fuseline_steps",
                "Steps this worker started, and how each run ended (outcome: started, succeeded, "
                "skipped, failed, retried, lost).",
                ["workflow", "step", "outcome"],
                registry=registry,
            ),
            durations=Histogram(
                "fuseline_step_duration_seconds",
                "How long each step run took, whatever its outcome.",
                ["workflow", "step"],
                buckets=STEP_BUCKETS,
                registry=registry,
            ),
            claims=Histogram(
                "fuseline_claim_seconds",
                "Latency of the worker's claims (a claim carrying the previous report included).",
                buckets=CALL_BUCKETS,
                registry=registry,
            ),
            reports=Histogram(
                "fuseline_report_seconds",
                "Latency of the worker's reports sent on their own or in batches.",
                buckets=CALL_BUCKETS,
                registry=registry,
            ),
        )


_families: dict[int, tuple[CollectorRegistry, StepFamilies]] = {}
_families_lock = threading.Lock()


def families_of(registry: CollectorRegistry) -> StepFamilies:
    """The step metrics registered in ``registry``, created on first use."""
    with _families_lock:
        found = _families.get(id(registry))
        if found is None:
            found = _families[id(registry)] = (registry, StepFamilies.create(registry))
        return found[1]


class WorkerMetrics(WorkerObserver):
    """Counts what one worker does in ``registry`` (prometheus_client's default one by default).

    Serve the registry yourself (``prometheus_client.start_http_server``) or
    let ``fuseline worker run --metrics-port`` do it. Safe to share between
    threads: reports may be sent from the worker's report flusher.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.families = families_of(registry)
        self._retries: dict[tuple[str, str, str], int] = {}
        self._series: dict[tuple[str, str, str], Any] = {}

    # -- the observer ----------------------------------------------------------------------
    def client(self, client: BrokerClient) -> BrokerClient:
        return MeteredClient(client, self)

    def serving(self, schemas: Sequence[WorkflowSchema]) -> None:
        for schema in schemas:
            for name, scheduling in scheduling_of(schema).steps.items():
                self._retries[(schema.workflow_id, schema.version, name)] = scheduling.max_retries

    def started(self, assignment: StepAssignment) -> None:
        self._series_of(assignment.workflow_id, assignment.step_name, STARTED).inc()

    def finished(self, assignment: StepAssignment, execution: Execution) -> None:
        self._series_of(assignment.workflow_id, assignment.step_name, "").observe(execution.seconds)

    def dropped(self, assignment: StepAssignment) -> None:
        self._series_of(assignment.workflow_id, assignment.step_name, LOST).inc()

    # -- what the broker answered ----------------------------------------------------------
    def reported(self, report: StepReport, refusal: BrokerError | None) -> None:
        """The broker accepted ``report`` (``refusal`` None) or refused it: count its outcome."""
        self._series_of(report.workflow_id, report.step_name, self.outcome(report, refusal)).inc()

    def outcome(self, report: StepReport, refusal: BrokerError | None) -> str:
        if refusal is not None:
            return LOST
        state = Status(report.state)
        if state is Status.FAILED:
            return RETRIED if self._retry_left(report) else FAILED
        return SKIPPED if state is Status.SKIPPED else SUCCEEDED

    def _retry_left(self, report: StepReport) -> bool:
        """Whether the broker surely retries this failure (see the module's docstring)."""
        key = (report.workflow_id, report.version or "", item_base(report.step_name))
        max_retries = self._retries.get(key, 0)
        return max_retries > 0 and (report.attempt or 1) <= max_retries

    def _series_of(self, workflow_id: str, step_name: str, outcome: str) -> Any:
        """One labelled series (``outcome`` "": the duration histogram), looked up once."""
        step = item_base(step_name)
        key = (workflow_id, step, outcome)
        series = self._series.get(key)
        if series is None:
            if outcome:
                series = self.families.steps.labels(workflow_id, step, outcome)
            else:
                series = self.families.durations.labels(workflow_id, step)
            self._series[key] = series
        return series


class MeteredClient(BrokerClient):
    """The worker's client, timing its claims and reports and telling each report's fate.

    A report refused with :class:`~fuseline.errors.WorkerExpired` when sent
    on its own is dropped by the worker (lost); sent with a claim, the worker
    sends it again on its own, so it is counted then. Outages
    (:class:`~fuseline.errors.DatabaseUnavailable`) decide nothing: the
    worker tries again.
    """

    def __init__(self, inner: BrokerClient, metrics: WorkerMetrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._claims = metrics.families.claims
        self._reports = metrics.families.reports

    def __getattr__(self, name: str) -> Any:  # lease_seconds, broker, ...: the inner client's
        return getattr(self.inner, name)

    def get_step(self, worker_id: str) -> StepAssignment | None:
        started = perf_counter()
        try:
            return self.inner.get_step(worker_id)
        finally:
            self._claims.observe(perf_counter() - started)

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        started = perf_counter()
        try:
            return self.inner.get_steps(worker_id, limit)
        finally:
            self._claims.observe(perf_counter() - started)

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        started = perf_counter()
        try:
            held = self.inner.report_and_claim(worker_id, report)
        except (LeaseLost, ReportConflict) as refusal:  # the report refused, nothing claimed
            self._metrics.reported(report, refusal)
            raise
        finally:
            self._claims.observe(perf_counter() - started)
        self._metrics.reported(report, None)
        return held

    def report_step(self, worker_id: str, report: StepReport) -> None:
        started = perf_counter()
        try:
            self.inner.report_step(worker_id, report)
        except (LeaseLost, ReportConflict, WorkerExpired) as refusal:
            self._metrics.reported(report, refusal)
            raise
        finally:
            self._reports.observe(perf_counter() - started)
        self._metrics.reported(report, None)

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        started = perf_counter()
        try:
            outcomes = self.inner.report_steps(worker_id, reports)
        except WorkerExpired as refusal:
            for report in reports:
                self._metrics.reported(report, refusal)
            raise
        finally:
            self._reports.observe(perf_counter() - started)
        for report, outcome in zip(reports, outcomes, strict=True):
            self._metrics.reported(report, outcome)
        return outcomes

    # -- passed on as they are ---------------------------------------------------------------
    def register_worker(
        self, schemas: Sequence[WorkflowSchema], *, queues: Sequence[str] | None = None
    ) -> str:
        if queues is None:  # a client that predates queues is asked without them
            return self.inner.register_worker(schemas)
        return self.inner.register_worker(schemas, queues=queues)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        return self.inner.keep_alive(worker_id)

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        self.inner.release_steps(worker_id, assignments)

    def deregister_worker(self, worker_id: str) -> None:
        self.inner.deregister_worker(worker_id)

    def wait_for_work(self, timeout: float) -> bool:
        return self.inner.wait_for_work(timeout)

    def __repr__(self) -> str:
        return f"MeteredClient({self.inner!r})"
