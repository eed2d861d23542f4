"""Shapes a DAG fixed at definition time cannot express: fan-out over a list, a call of
another workflow, and a wait for a signal from outside.

Each is a :class:`Step` the broker acts on itself, described in the schema under
its own key (``map``, ``subworkflow``, ``wait_for``), so any broker and any worker
that reads the schema knows what to do without importing user code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import WorkflowDefinitionError
from .dependencies import Dependency
from .schema import check_name
from .step import Parameter, Step, as_steps

if TYPE_CHECKING:
    from .workflow import Workflow

#: The parameter of a mapped step that receives its item.
ITEM_PARAMETER = "item"
#: The most items one Map may fan out to, whatever ``max_items`` says.
MAX_ITEMS_LIMIT = 1_000_000


class ShapeStep(Step):
    """A step the broker completes itself: no worker ever runs it."""

    def run_step(self, *args: Any, **kwargs: Any) -> Any:
        raise WorkflowDefinitionError(
            f"{type(self).__name__} {self.label!r} is completed by the broker; no worker runs it"
        )

    def describe_shape(self, names: Mapping[Step, str]) -> dict[str, Any]:
        """The schema keys that say what the broker does with this step."""
        raise NotImplementedError


class Map(Step):
    """Run ``step`` once per item of the list that ``over`` returned.

    Each item is a step of its own (shown as ``name[i]``), claimable by any
    worker, created in the transaction that accepted ``over``'s result; the
    item is passed as the mapped step's parameter ``item``, its other
    parameters resolve as usual, and its policies (retries, timeouts) apply
    to each item. ``Depends(the_map)`` receives the results in item order
    (``[]`` for an empty list). One item that fails for good fails the map
    and cancels the items not started. A result that is not a list, or has
    more than ``max_items`` items, fails ``over``.
    """

    def __init__(
        self,
        step: Step | Callable[..., Any],
        *,
        over: Step | Callable[..., Any],
        max_items: int = 10_000,
        name: str | None = None,
    ) -> None:
        (mapped,) = as_steps(step, "Map(step, ...)")
        (upstream,) = as_steps(over, "Map(..., over=)")
        if isinstance(mapped, (Map, ShapeStep)):
            raise WorkflowDefinitionError(
                f"Map runs a step per item; {mapped!r} is itself completed by the broker"
            )
        if not any(p.name == ITEM_PARAMETER and p.dependency is None for p in mapped.parameters):
            raise WorkflowDefinitionError(
                f"Map({mapped.label!r}): the mapped step needs a parameter named {ITEM_PARAMETER!r} "
                "to receive its item"
            )
        if (
            isinstance(max_items, bool)
            or not isinstance(max_items, int)
            or not 1 <= max_items <= MAX_ITEMS_LIMIT
        ):
            raise WorkflowDefinitionError(
                f"Map max_items must be an integer from 1 to {MAX_ITEMS_LIMIT:,}, not {max_items!r}"
            )
        self.step = mapped
        self.over = upstream
        self.max_items = max_items
        super().__init__(
            name=name or mapped.name,
            policies=mapped.policies,
            max_attempts=mapped.max_attempts,
            queue=mapped.queue,
        )
        self._add_inbound(upstream, None)

    @property
    def kind(self) -> str:
        return "map"

    @property
    def default_name(self) -> str:
        return self.step.default_name

    @property
    def type_name(self) -> str:
        return f"Map[{self.step.type_name}]"

    @property
    def is_async(self) -> bool:
        return self.step.is_async

    def _read_parameters(self) -> tuple[Parameter, ...]:
        return self.step.parameters

    def _body(self) -> Callable[..., Any]:
        return self.step._body()

    def _call_body(self, kwargs: dict[str, Any]) -> Any:
        return self.step._call_body(kwargs)

    def run_step(self, *args: Any, **kwargs: Any) -> Any:
        return self.step.run_step(*args, **kwargs)

    def before_all(self, shared: dict[Step, Any]) -> Any:
        return self.step.before_all(shared)

    def setup(self, shared: dict[Step, Any]) -> Any:
        return self.step.setup(shared)

    def teardown(self, shared: dict[Step, Any], setup_res: Any, result: Any) -> Any:
        return self.step.teardown(shared, setup_res, result)

    def after_all(self, shared: dict[Step, Any]) -> Any:
        return self.step.after_all(shared)

    def describe_shape(self, names: Mapping[Step, str]) -> dict[str, Any]:
        return {"map": {"over": names[self.over], "max_items": self.max_items}}


class WaitFor(ShapeStep):
    """Wait for ``signal`` to reach the instance; the step's result is the signal's data.

    ``broker.signal(instance_id, signal, data)`` or ``fuseline instances signal
    ID SIGNAL --data JSON`` sends it. A signal sent before the step is reached
    is kept until it is. Past ``timeout`` seconds (counted from when the step
    is reached) the step FAILS with "no signal 'S' within N s". No worker
    waits: the broker completes the step.
    """

    def __init__(self, signal: str, *, timeout: float | None = None, name: str | None = None) -> None:
        self.signal = check_name("signal name", signal)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise WorkflowDefinitionError(
                f"WaitFor timeout must be a number of seconds above 0, not {timeout!r}"
            )
        self.timeout = float(timeout) if timeout is not None else None
        super().__init__(name=name)

    @property
    def kind(self) -> str:
        return "wait_for"

    @property
    def default_name(self) -> str:
        return f"wait_for_{self.signal}".replace("-", "_")[:200]

    def describe_shape(self, names: Mapping[Step, str]) -> dict[str, Any]:
        return {"wait_for": {"signal": self.signal, "timeout": self.timeout}}


class SubWorkflow(ShapeStep):
    """Run workflow ``child`` as an instance of its own and end with its result.

    ``inputs`` are the child's inputs: a ``Depends(step)`` is that
    predecessor's result, anything else is taken as given (JSON); a child
    input not given is the parent's input of the same name. The broker
    dispatches the child in the transaction that queues this step, so no
    worker waits; the step ends when the child does (FAILED, naming the
    child, when the child fails or is cancelled). Cancelling the parent
    cancels the child.
    """

    def __init__(
        self, child: Workflow, *, inputs: Mapping[str, Any] | None = None, name: str | None = None
    ) -> None:
        from .workflow import Workflow

        if not isinstance(child, Workflow):
            raise WorkflowDefinitionError(f"SubWorkflow needs a Workflow, not {type(child).__name__}")
        self.child = child
        self.child_inputs = dict(inputs or {})
        for key in self.child_inputs:
            check_name("SubWorkflow input name", key)
        super().__init__(name=name)
        for value in self.child_inputs.values():
            if isinstance(value, Dependency):
                for target in value.resolve():
                    self._add_inbound(target, None)

    @property
    def kind(self) -> str:
        return "subworkflow"

    @property
    def default_name(self) -> str:
        return self.child.workflow_id.split("-")[0][:200] or "subworkflow"

    def describe_shape(self, names: Mapping[Step, str]) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for key, value in self.child_inputs.items():
            if isinstance(value, Dependency):
                inputs[key] = {"step": names[value.resolve()[0]]}
            else:
                inputs[key] = {"value": value}
        return {"subworkflow": {"schema": self.child.to_schema().to_dict(), "inputs": inputs}}

    def consumed(self, names: Mapping[Step, str]) -> dict[str, list[str]]:
        """Predecessors whose results the child's inputs take, as schema ``dependencies``."""
        return {
            f"input:{key}": [names[value.resolve()[0]]]
            for key, value in self.child_inputs.items()
            if isinstance(value, Dependency)
        }


def contains_workflow(step: Step, workflow_id: str, seen: frozenset[int] = frozenset()) -> bool:
    """Whether ``step`` is a SubWorkflow that runs ``workflow_id``, directly or further down."""
    if not isinstance(step, SubWorkflow) or id(step.child) in seen:
        return False
    child = step.child
    if child.workflow_id == workflow_id:
        return True
    return any(contains_workflow(s, workflow_id, seen | {id(child)}) for s in child.steps.values())
