"""Workflows for the scheduling contract (issue 11): retries the broker schedules, pauses,
limits and queues. Tests drive most of them by hand (claims and reports), so their steps do
little; each workflow has its own step objects and an explicit ``workflow_id``.
"""

from __future__ import annotations

from fuseline import Sleep, Step, Workflow
from fuseline.policies import ConcurrencyLimit, RateLimit, RetryPolicy

#: Seconds of the pauses and limit windows below: long enough to tell "before" from "after"
#: on a loaded machine, short enough to keep the suite quick.
PAUSE = 1.0


class Fragile(Step):
    """A step whose failures tests report by hand."""

    def run_step(self, x: int) -> int:
        return x


class Downstream(Step):
    def run_step(self) -> str:
        return "downstream"


def _fragile(workflow_id: str, retry: RetryPolicy, max_attempts: int = 3) -> Workflow:
    """fragile (with ``retry``) -> downstream."""
    fragile, downstream = Fragile(policies=[retry], max_attempts=max_attempts), Downstream()
    fragile >> downstream
    return Workflow(outputs=[downstream], workflow_id=workflow_id, version="1")


#: The retry waits long: the step stays QUEUED, unclaimable, for the whole test.
RETRY_LATER = _fragile("contract-retry-later", RetryPolicy(max_retries=2, wait=600.0))
#: The retry comes after PAUSE seconds.
RETRY_SOON = _fragile("contract-retry-soon", RetryPolicy(max_retries=2, wait=PAUSE))
#: One retry, at once.
RETRY_ONCE = _fragile("contract-retry-once", RetryPolicy(max_retries=1, wait=0.0))
#: One retry at once, and two claims for lost workers: separate budgets.
RETRY_AND_LOSE = _fragile("contract-retry-and-lose", RetryPolicy(max_retries=1, wait=0.0), max_attempts=2)


class Appeal(Step):
    """A step whose own RetryPolicy stands over the workflow's."""

    def run_step(self) -> str:
        return "appeal"


#: The workflow's RetryPolicy applies to steps without one of their own.
WORKFLOW_RETRY = Workflow(
    outputs=[Appeal()],
    workflow_id="contract-workflow-retry",
    version="1",
    policies=[RetryPolicy(max_retries=1, wait=600.0)],
)


# -- Sleep ------------------------------------------------------------------------------------------
class Before(Step):
    def run_step(self, x: int) -> int:
        return x


class After(Step):
    def run_step(self) -> str:
        return "after"


def _paused(workflow_id: str, *, first: bool) -> Workflow:
    """before -> pause -> after, or pause -> after when ``first``."""
    pause, after = Sleep(PAUSE, name="pause"), After()
    if first:
        pause >> after
    else:
        Before() >> pause >> after
    return Workflow(outputs=[after], workflow_id=workflow_id, version="1")


PAUSED = _paused("contract-paused", first=False)
PAUSED_FIRST = _paused("contract-paused-first", first=True)


# -- limits ---------------------------------------------------------------------------------------
class Limited(Step):
    def run_step(self, customer: str) -> str:
        return customer


LIMITED = Workflow(
    outputs=[Limited(policies=[ConcurrencyLimit(1)])], workflow_id="contract-limited", version="1"
)
LIMITED_PER_CUSTOMER = Workflow(
    outputs=[Limited(policies=[ConcurrencyLimit(1, key="customer")])],
    workflow_id="contract-limited-per-customer",
    version="1",
)


class Open(Step):
    def run_step(self, customer: str) -> str:
        return customer


class Close(Step):
    def run_step(self) -> str:
        return "closed"


def _one_at_a_time(workflow_id: str, limit: ConcurrencyLimit) -> Workflow:
    """open -> close, with a workflow ConcurrencyLimit."""
    close = Close()
    Open() >> close
    return Workflow(outputs=[close], workflow_id=workflow_id, version="1", policies=[limit])


ONE_AT_A_TIME = _one_at_a_time("contract-one-at-a-time", ConcurrencyLimit(1))
ONE_PER_CUSTOMER = _one_at_a_time("contract-one-per-customer", ConcurrencyLimit(1, key="customer"))


class Call(Step):
    def run_step(self, customer: str) -> str:
        return customer


#: Two starts per PAUSE seconds.
RATED = Workflow(
    outputs=[Call(policies=[RateLimit(2, per=PAUSE)])], workflow_id="contract-rated", version="1"
)
RATED_PER_CUSTOMER = Workflow(
    outputs=[Call(policies=[RateLimit(1, per=600.0, key="customer")])],
    workflow_id="contract-rated-per-customer",
    version="1",
)
#: One start per 10 minutes, and one retry at once: the retry's claim counts too.
RATED_RETRY = Workflow(
    outputs=[Call(policies=[RateLimit(1, per=600.0), RetryPolicy(max_retries=1, wait=0.0)])],
    workflow_id="contract-rated-retry",
    version="1",
)


# -- queues -----------------------------------------------------------------------------------------
class Prepare(Step):
    def run_step(self, x: int) -> int:
        return x


class Render(Step):
    queue = "gpu"

    def run_step(self) -> str:
        return "rendered"


def _render() -> Workflow:
    """prepare (queue "default") -> render (queue "gpu")."""
    render = Render()
    Prepare() >> render
    return Workflow(outputs=[render], workflow_id="contract-render", version="1")


RENDER = _render()
