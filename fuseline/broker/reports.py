"""Checking a worker's report, the same way in every broker."""

from __future__ import annotations

from ..errors import BrokerError
from ..states import REPORTABLE_STATES, Status
from .base import StepReport

#: The error of a step whose lease expired on its last allowed attempt.
WORKER_LOST = "worker lost: the step's lease expired on its last allowed attempt"
#: The error of a FAILED report that came without one.
NO_ERROR_TEXT = "the step failed (the worker gave no error text)"


def reported_state(report: StepReport) -> Status:
    """The report's state, which must be one a worker may set."""
    try:
        state = Status(report.state)
    except ValueError:
        raise BrokerError(f"report names an unknown state {report.state!r}") from None
    if state not in REPORTABLE_STATES:
        raise BrokerError(
            f"a worker may report SUCCEEDED, FAILED or SKIPPED, not {state} (step {report.step_name!r})"
        )
    return state


def why_not_held(state: Status, holder: str | None, attempt: int, worker_id: str, report: StepReport) -> str:
    """Why a report was refused, in words a user can act on."""
    if state is Status.CANCELLED:
        return "the step was cancelled"
    if state is not Status.RUNNING:
        return f"the step is {state}, not RUNNING"
    if holder != worker_id:
        return "the step's lease expired and it was handed to another worker"
    return f"the report is for attempt {report.attempt} but attempt {attempt} is current"
