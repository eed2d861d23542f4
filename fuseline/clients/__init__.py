"""Broker clients: how a worker talks to its broker.

Workers depend on this small interface rather than on a broker, so the same
worker code runs against a broker in the same process
(:class:`LocalBrokerClient`) or behind ``fuseline server``
(:class:`~fuseline.clients.http.HttpBrokerClient`, no database credentials).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from ..broker.base import (
    Broker,
    Lease,
    StepAssignment,
    StepReport,
    claim_one_at_a_time,
    report_one_at_a_time,
)
from ..errors import BrokerError
from ..workflow.schema import WorkflowSchema


class BrokerClient(ABC):
    """The four calls a worker makes, plus a goodbye."""

    @abstractmethod
    def register_worker(
        self, schemas: Sequence[WorkflowSchema], *, queues: Sequence[str] | None = None
    ) -> str:
        """Register the workflows this worker can run (only their steps in ``queues``, if given);
        returns its worker id. Clients written before queues existed may leave ``queues`` out:
        workers then ask without it when they serve every queue."""

    @abstractmethod
    def get_step(self, worker_id: str) -> StepAssignment | None:
        """The next step to run, or None when nothing is ready."""

    @abstractmethod
    def report_step(self, worker_id: str, report: StepReport) -> None:
        """Report the outcome of the step this worker holds."""

    @abstractmethod
    def keep_alive(self, worker_id: str) -> list[Lease]:
        """Heartbeat; returns the leases the worker still holds."""

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        """Report, then claim the next step: one round trip where the broker allows it.

        Raises what ``report_step`` raises, in which case nothing was claimed.
        """
        self.report_step(worker_id, report)
        return self.get_step(worker_id)

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        """Up to ``limit`` steps at once (a prefetch); one ``get_step`` at a time by default."""
        return claim_one_at_a_time(self.get_step, worker_id, limit)

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        """Report several steps; per report None (accepted) or the LeaseLost / ReportConflict."""
        return report_one_at_a_time(self.report_step, worker_id, reports)

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        """Give back prefetched steps that will not run. By default nothing is sent and
        their leases run out instead (later, and at the cost of an attempt)."""

    def deregister_worker(self, worker_id: str) -> None:
        """Say goodbye: steps still held go back to the queue at once."""

    def wait_for_work(self, timeout: float) -> bool:
        """Wait until work may be ready (True) or ``timeout`` passes; polling by default."""
        time.sleep(timeout)
        return False


class LocalBrokerClient(BrokerClient):
    """Calls a broker object in this process directly."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def lease_seconds(self) -> float:
        """The broker's lease length, so engines can pace their heartbeats."""
        return self.broker.lease_seconds

    def register_worker(
        self, schemas: Sequence[WorkflowSchema], *, queues: Sequence[str] | None = None
    ) -> str:
        return self.broker.register_worker(schemas, queues=queues)

    def get_step(self, worker_id: str) -> StepAssignment | None:
        return self.broker.get_step(worker_id)

    def report_step(self, worker_id: str, report: StepReport) -> None:
        self.broker.report_step(worker_id, report)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        return self.broker.keep_alive(worker_id)

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        return self.broker.report_and_claim(worker_id, report)

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        return self.broker.get_steps(worker_id, limit)

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        return self.broker.report_steps(worker_id, reports)

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        self.broker.release_steps(worker_id, assignments)

    def deregister_worker(self, worker_id: str) -> None:
        self.broker.deregister_worker(worker_id)

    def wait_for_work(self, timeout: float) -> bool:
        return self.broker.wait_for_work(timeout)

    def __repr__(self) -> str:
        return f"LocalBrokerClient({self.broker!r})"


def __getattr__(name: str) -> object:
    """``HttpBrokerClient`` is imported on first use, so workers on a database never load an
    HTTP client they do not need."""
    if name == "HttpBrokerClient":
        from .http import HttpBrokerClient

        return HttpBrokerClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
