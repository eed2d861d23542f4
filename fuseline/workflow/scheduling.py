"""Scheduling policies: limits a broker applies when it hands steps out.

Unlike :class:`~fuseline.policies.StepPolicy`, these do not wrap a step's
execution: they decide *when* a step may start, across every worker, and
are counted by the broker from live state (the steps running now, the
starts of the last window), so nothing can leak when a worker dies. An
in-process run (``Workflow.run``) ignores them.

- ``ConcurrencyLimit(max, key=None)``: on a step, at most ``max`` of that
  step RUNNING at once across all instances and workers; on a workflow, at
  most ``max`` of its instances in progress (started and not finished).
  With ``key="customer"``, per value of that workflow input.
- ``RateLimit(n, per, key=None)``: on a step, at most ``n`` starts in any
  window of ``per`` seconds (a sliding window), per key value. A window is
  at most a day (``RATE_WINDOW_MAX``): the broker prunes older starts.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from ..errors import WorkflowDefinitionError
from .policies import Policy

#: The longest RateLimit window, in seconds: starts older than this are pruned by the broker.
RATE_WINDOW_MAX = 86_400.0

#: What a limit key may be: the name of a workflow input (a Python identifier).
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SchedulingPolicy(Policy):
    """A limit the broker applies when it hands steps out (in-process runs ignore it)."""

    kind: ClassVar[str] = "scheduling"
    #: The workflow input whose value separates the limits, or None for one limit.
    key: str | None = None


def _check_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not _INPUT_NAME.match(key):
        raise WorkflowDefinitionError(f"a limit key must name a workflow input, not {key!r}")
    return key


def _whole(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkflowDefinitionError(f"{what} must be a whole number of at least 1, not {value!r}")
    return value


class ConcurrencyLimit(SchedulingPolicy):
    """At most ``max`` at once (steps RUNNING, or instances in progress), per ``key`` value."""

    kind = "concurrency_limit"

    def __init__(self, max: int, key: str | None = None) -> None:
        self.max = _whole("ConcurrencyLimit(max)", max)
        self.key = _check_key(key)

    def to_config(self) -> dict[str, Any]:
        return {"max": self.max, "key": self.key}


class RateLimit(SchedulingPolicy):
    """At most ``n`` starts of a step in any window of ``per`` seconds, per ``key`` value."""

    kind = "rate_limit"

    def __init__(self, n: int, per: float, key: str | None = None) -> None:
        self.n = _whole("RateLimit(n)", n)
        if isinstance(per, bool) or not isinstance(per, (int, float)) or not math.isfinite(per) or per <= 0:
            raise WorkflowDefinitionError(f"RateLimit(per) must be a number of seconds above 0, not {per!r}")
        if per > RATE_WINDOW_MAX:
            raise WorkflowDefinitionError(
                f"RateLimit(per) may be at most {RATE_WINDOW_MAX:g} seconds (a day), not {per!r}"
            )
        self.per = float(per)
        self.key = _check_key(key)

    def to_config(self) -> dict[str, Any]:
        return {"n": self.n, "per": self.per, "key": self.key}
