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
#: WaitFor steps wait here, available at their timeout: a signal or the timers complete them.
SIGNALS_QUEUE = "__fuseline_signals__"
#: A Map's own step waits here while its items run; the last item completes it.
MAPS_QUEUE = "__fuseline_maps__"
#: A SubWorkflow step waits here while its child runs; the child's end completes it.
CHILDREN_QUEUE = "__fuseline_children__"
#: The "timeout" of a WaitFor without one, in seconds (a century): only its signal moves it.
NEVER = 100 * 365.25 * 86400.0
#: Queues no worker serves: the broker itself moves the steps waiting in them.
PARKED_QUEUES = frozenset({TIMERS_QUEUE, SIGNALS_QUEUE, MAPS_QUEUE, CHILDREN_QUEUE})


@dataclass(frozen=True)
class MapShape:
    over: str
    max_items: int


@dataclass(frozen=True)
class SignalShape:
    signal: str
    timeout: float | None


@dataclass(frozen=True)
class ChildShape:
    schema: Mapping[str, Any]
    #: child input -> {"step": predecessor} or {"value": constant}
    inputs: Mapping[str, Mapping[str, Any]]


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
    map: MapShape | None = None
    wait_for: SignalShape | None = None
    child: ChildShape | None = None

    @property
    def max_retries(self) -> int:
        return self.retry.max_retries if self.retry is not None else 0

    @property
    def waits_in(self) -> str:
        """The queue its rows carry: a step the broker completes waits where no worker claims
        (a Map's items wait in the step's own queue)."""
        if self.sleep_seconds is not None:
            return TIMERS_QUEUE
        if self.wait_for is not None:
            return SIGNALS_QUEUE
        if self.map is not None:
            return MAPS_QUEUE
        if self.child is not None:
            return CHILDREN_QUEUE
        return self.queue

    @property
    def parked(self) -> bool:
        """Whether the broker, not a worker, completes this step's own row."""
        return self.waits_in in PARKED_QUEUES

    @property
    def delay(self) -> float | None:
        """Seconds after it is queued that the timers look at it: a Sleep's end, a WaitFor's
        timeout (None: never by time)."""
        if self.sleep_seconds is not None:
            return self.sleep_seconds
        if self.wait_for is not None:
            return self.wait_for.timeout if self.wait_for.timeout is not None else NEVER
        return None


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
        """Whether some step has a time the timers watch (a Sleep, a WaitFor with a timeout)."""
        return any(s.delay is not None for s in self.steps.values())

    @property
    def shaped(self) -> bool:
        """Whether some step is a Map, a WaitFor or a SubWorkflow (the general paths handle them)."""
        return any(s.map or s.wait_for or s.child for s in self.steps.values())

    @property
    def queues(self) -> frozenset[str]:
        """The queues its steps' work waits in, for workers (parked ones are no worker's;
        a Map's items wait in the step's queue)."""
        return frozenset(s.queue for s in self.steps.values() if s.map is not None or not s.parked)

    def of(self, name: str) -> StepScheduling:
        """The scheduling of a step, or of a Map item (``name[i]``) that of its map's step."""
        found = self.steps.get(name)
        return found if found is not None else self.steps[item_base(name)]


def scheduling_of(schema: WorkflowSchema) -> WorkflowScheduling:
    workflow_policies = _rebuilt(schema.policies)
    workflow_retry = _first(workflow_policies, RetryPolicy)
    steps = {}
    for spec in schema.steps:
        policies = _rebuilt(spec.get("policies", ()))
        sleep = spec.get("sleep_seconds")
        mapped, waits, child = spec.get("map"), spec.get("wait_for"), spec.get("subworkflow")
        steps[spec["name"]] = StepScheduling(
            queue=spec.get("queue", DEFAULT_QUEUE),
            sleep_seconds=float(sleep) if sleep is not None else None,
            retry=_first(policies, RetryPolicy) or workflow_retry,
            concurrency=_first(policies, ConcurrencyLimit),
            rate=_first(policies, RateLimit),
            map=MapShape(mapped["over"], int(mapped["max_items"])) if mapped else None,
            wait_for=SignalShape(waits["signal"], waits.get("timeout")) if waits else None,
            child=ChildShape(child["schema"], child.get("inputs", {})) if child else None,
        )
    return WorkflowScheduling(steps, _first(workflow_policies, ConcurrencyLimit))


def _rebuilt(descriptions: Sequence[dict[str, Any]]) -> list[Policy]:
    """The policies a broker acts on; others (timeouts, custom ones) stay with the workers."""
    kinds = {RetryPolicy.kind, ConcurrencyLimit.kind, RateLimit.kind}
    return [policy_from_config(d) for d in descriptions if d.get("type") in kinds]


def _first(policies: Sequence[Policy], kind: type) -> Any:
    return next((p for p in policies if isinstance(p, kind)), None)


def item_name(map_step: str, index: int) -> str:
    """The name of a Map's item: ``step[i]``."""
    return f"{map_step}[{index}]"


def item_base(name: str) -> str:
    """The Map step an item belongs to (``step[3]`` -> ``step``); other names unchanged."""
    if name.endswith("]"):
        cut = name.rfind("[")
        if cut > 0 and name[cut + 1 : -1].isdigit():
            return name[:cut]
    return name


def item_index(name: str) -> int | None:
    """The index of a Map item's name, None for other steps."""
    base = item_base(name)
    return int(name[len(base) + 1 : -1]) if base != name else None
