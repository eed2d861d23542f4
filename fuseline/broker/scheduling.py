"""What a broker reads from a workflow's schema to schedule its steps: queues, pauses,
retries and limits (:mod:`fuseline.workflow.scheduling`, ``RetryPolicy``, ``Sleep``).

Policies are rebuilt from their schema descriptions with
``policy_from_config``, which knows only fuseline's registered classes:
nothing stored is imported or evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..workflow.policies import Policy, RetryPolicy, policy_from_config
from ..workflow.scheduling import ConcurrencyLimit, RateLimit
from ..workflow.schema import WorkflowSchema
from ..workflow.step import DEFAULT_QUEUE

#: Sleep steps wait in this queue, which no worker serves: the broker completes them.
TIMERS_QUEUE = "__fuseline_timers__"


@dataclass(frozen=True)
class StepScheduling:
    """How the broker schedules one step."""

    queue: str = DEFAULT_QUEUE
    #: A Sleep step: the broker completes it this many seconds after it is queued.
    sleep_seconds: float | None = None
    #: The RetryPolicy the broker applies to its failures (its own, else the workflow's).
    retry: RetryPolicy | None = None
    concurrency: ConcurrencyLimit | None = None
    rate: RateLimit | None = None

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries if self.retry is not None else 0

    @property
    def waits_in(self) -> str:
        """The queue its rows carry: a sleep waits where no worker claims."""
        return TIMERS_QUEUE if self.sleep_seconds is not None else self.queue


@dataclass(frozen=True)
class WorkflowScheduling:
    steps: Mapping[str, StepScheduling]
    #: At most this many instances in progress (per key value), or None.
    concurrency: ConcurrencyLimit | None

    @property
    def gated(self) -> bool:
        """Whether a limit applies to some step (claims then check limits one by one)."""
        return self.concurrency is not None or any(s.concurrency or s.rate for s in self.steps.values())

    @property
    def sleeps(self) -> bool:
        """Whether some step is a Sleep (the broker completes those itself)."""
        return any(s.sleep_seconds is not None for s in self.steps.values())

    @property
    def queues(self) -> frozenset[str]:
        """The queues its steps wait in, for workers (the timers' queue is no worker's)."""
        return frozenset(s.queue for s in self.steps.values() if s.sleep_seconds is None)


def scheduling_of(schema: WorkflowSchema) -> WorkflowScheduling:
    workflow_policies = _rebuilt(schema.policies)
    workflow_retry = _first(workflow_policies, RetryPolicy)
    steps = {}
    for spec in schema.steps:
        policies = _rebuilt(spec.get("policies", ()))
        sleep = spec.get("sleep_seconds")
        steps[spec["name"]] = StepScheduling(
            queue=spec.get("queue", DEFAULT_QUEUE),
            sleep_seconds=float(sleep) if sleep is not None else None,
            retry=_first(policies, RetryPolicy) or workflow_retry,
            concurrency=_first(policies, ConcurrencyLimit),
            rate=_first(policies, RateLimit),
        )
    return WorkflowScheduling(steps, _first(workflow_policies, ConcurrencyLimit))


def _rebuilt(descriptions: Sequence[dict[str, Any]]) -> list[Policy]:
    """The policies a broker acts on; others (timeouts, custom ones) stay with the workers."""
    kinds = {RetryPolicy.kind, ConcurrencyLimit.kind, RateLimit.kind}
    return [policy_from_config(d) for d in descriptions if d.get("type") in kinds]


def _first(policies: Sequence[Policy], kind: type) -> Any:
    return next((p for p in policies if isinstance(p, kind)), None)
