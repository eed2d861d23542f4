"""``WorkerObserver``: what a worker tells about its work, for metrics; by default nobody listens.

The worker calls it at three points of a step's run (started, finished,
result dropped) and lets it wrap the broker client, through which every
claim and report goes. This base class does nothing and wraps nothing, so a
worker without metrics pays a few empty method calls per step and not one
extra instruction per claim or report. :class:`fuseline.metrics.WorkerMetrics`
is the observer that counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..broker.base import StepAssignment
    from ..clients import BrokerClient
    from ..workflow.schema import WorkflowSchema
    from .assignment import Execution


class WorkerObserver:
    """Hears what one worker does; every method here does nothing (the default observer)."""

    def client(self, client: BrokerClient) -> BrokerClient:
        """The client the worker claims and reports through (to time and follow those calls)."""
        return client

    def serving(self, schemas: Sequence[WorkflowSchema]) -> None:
        """The workflows the worker runs (their policies say which failures the broker retries)."""

    def started(self, assignment: StepAssignment) -> None:
        """The worker starts running a claimed step."""

    def finished(self, assignment: StepAssignment, execution: Execution) -> None:
        """The step ran (``execution.seconds`` long); its report is yet to be sent."""

    def dropped(self, assignment: StepAssignment) -> None:
        """The step's result is not reported: its lease was lost while it ran."""


#: The observer of a worker without metrics.
NO_OBSERVER = WorkerObserver()
