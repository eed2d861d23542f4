"""A real broker client that fails on cue: how the worker tests provoke outages and refusals.

:class:`FaultyClient` passes every call to a :class:`LocalBrokerClient` on a
real broker, except that a call named in its faults first raises the next
error queued for it (made from the worker id, so an error can name it). The
broker itself is never imitated: what the worker does after a fault is
checked against the broker's real state.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence

from fuseline import StepAssignment, StepReport
from fuseline.broker import Broker, Lease
from fuseline.clients import BrokerClient, LocalBrokerClient
from fuseline.errors import BrokerError, DatabaseUnavailable
from fuseline.workflow import WorkflowSchema

#: Makes the error a faulty call raises, from the worker id it was called with.
Fault = Callable[[str], BaseException]


def outage(_worker_id: str) -> BaseException:
    return DatabaseUnavailable("connection refused (injected)")


class FaultyClient(BrokerClient):
    """A LocalBrokerClient whose calls raise the queued faults first, one per call, in order.

    ``faults`` maps a method name (``get_step``, ``keep_alive``, ...) to the
    faults its next calls raise. ``calls`` counts every call by name, the
    failed ones included.
    """

    def __init__(self, broker: Broker, **faults: Sequence[Fault]) -> None:
        self.inner = LocalBrokerClient(broker)
        self.faults = {name: list(queued) for name, queued in faults.items()}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()  # the heartbeat thread calls too

    @property
    def lease_seconds(self) -> float:
        return self.inner.lease_seconds

    def _enter(self, name: str, worker_id: str) -> None:
        with self._lock:
            self.calls[name] += 1
            queued = self.faults.get(name)
            fault = queued.pop(0) if queued else None
        if fault is not None:
            raise fault(worker_id)

    def register_worker(self, schemas: Sequence[WorkflowSchema]) -> str:
        self._enter("register_worker", "")
        return self.inner.register_worker(schemas)

    def get_step(self, worker_id: str) -> StepAssignment | None:
        self._enter("get_step", worker_id)
        return self.inner.get_step(worker_id)

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        self._enter("get_steps", worker_id)
        return self.inner.get_steps(worker_id, limit)

    def report_step(self, worker_id: str, report: StepReport) -> None:
        self._enter("report_step", worker_id)
        self.inner.report_step(worker_id, report)

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        self._enter("report_steps", worker_id)
        return self.inner.report_steps(worker_id, reports)

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        self._enter("report_and_claim", worker_id)
        return self.inner.report_and_claim(worker_id, report)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        self._enter("keep_alive", worker_id)
        return self.inner.keep_alive(worker_id)

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        self._enter("release_steps", worker_id)
        self.inner.release_steps(worker_id, assignments)

    def deregister_worker(self, worker_id: str) -> None:
        self._enter("deregister_worker", worker_id)
        self.inner.deregister_worker(worker_id)

    def wait_for_work(self, timeout: float) -> bool:
        return self.inner.wait_for_work(timeout)
