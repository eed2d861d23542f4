"""Step and instance states, and who moves a step out of each."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """State of a step (and, for the final ones, of an instance).

    - ``PENDING``: waiting for its dependencies; the broker queues it when they are met.
    - ``QUEUED``: ready; a worker's claim moves it to RUNNING.
    - ``RUNNING``: leased to one worker; that worker's report, the lease
      expiring, or a cancel moves it on.
    - ``SUCCEEDED`` / ``FAILED`` / ``SKIPPED`` / ``CANCELLED``: final; only
      ``retry_instance`` moves FAILED and CANCELLED steps back to PENDING.
    """

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:  # "SUCCEEDED", not "Status.SUCCEEDED", in messages and tables
        return self.value


FINAL_STATES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.CANCELLED})
ACTIVE_STATES = frozenset({Status.QUEUED, Status.RUNNING})
#: States a worker may report for the step it holds.
REPORTABLE_STATES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.SKIPPED})
#: Instance states: RUNNING until finalized once as one of the other three.
INSTANCE_STATES = frozenset({Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
