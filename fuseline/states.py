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
#: States a step still moves out of: the rules, a claim or a report will change them.
UNFINISHED_STATES = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING})
#: Final states that cancel what depends on them (fail-fast downstream).
BROKEN_STATES = frozenset({Status.FAILED, Status.CANCELLED})
ACTIVE_STATES = frozenset({Status.QUEUED, Status.RUNNING})
#: States a worker may report for the step it holds.
REPORTABLE_STATES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.SKIPPED})
#: Instance states: RUNNING until finalized once as one of the other three.
INSTANCE_STATES = frozenset({Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class EventKind(str, Enum):
    """What one line of an instance's history records (``fuseline_events.kind``).

    The step kinds named after a state (``queued``, ``succeeded``, ...) are
    that state in lower case: :meth:`of_step` and :meth:`of_instance` map a
    state to its kind, so no code spells them twice.
    """

    DISPATCHED = "dispatched"
    QUEUED = "queued"
    CLAIMED = "claimed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    #: A worker gave the step back unstarted (graceful stop, prefetch); the attempt is refunded.
    RELEASED = "released"
    #: The holder's lease ran out: the step is queued again or, on its last attempt, failed.
    LEASE_EXPIRED = "lease_expired"
    #: ``retry_instance``: failed and cancelled steps go back to PENDING.
    RETRIED = "retried"
    #: A step failed and its RetryPolicy allows another try: QUEUED again after the policy's
    #: delay (the event's detail is the failure).
    RETRY_SCHEDULED = "retry_scheduled"
    #: An operator's repair (retry --from, skip, set-output): the detail names the action, the
    #: operator and the steps touched.
    REPAIRED = "repaired"
    #: ``broker.signal``: the event's detail is the signal's name.
    SIGNALLED = "signalled"
    INSTANCE_SUCCEEDED = "instance_succeeded"
    INSTANCE_FAILED = "instance_failed"
    INSTANCE_CANCELLED = "instance_cancelled"

    @classmethod
    def of_step(cls, state: Status) -> EventKind:
        """The event that records a step reaching ``state``."""
        return cls(state.value.lower())

    @classmethod
    def of_instance(cls, status: Status) -> EventKind:
        """The event that records an instance finishing with ``status``."""
        return cls(f"instance_{status.value.lower()}")

    def __str__(self) -> str:
        return self.value
