"""Steps: the units of work a workflow is made of, and the edges between them."""

from __future__ import annotations

import inspect
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import WorkflowDefinitionError
from ..states import Status
from .dependencies import Dependency

if TYPE_CHECKING:
    from .policies import Policy

#: The queue of a step that names none, and of every worker that names none.
DEFAULT_QUEUE = "default"
#: What a queue name may be: letters, digits and ``_ - . :``, up to 100 characters.
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def check_queue_name(queue: object) -> str:
    """A queue name as given, or a clear error (spaces, empty, too long, not text)."""
    if not isinstance(queue, str) or not _QUEUE_NAME.match(queue):
        raise WorkflowDefinitionError(
            f"invalid queue name {queue!r}: use 1 to 100 letters, digits, '_', '-', '.' or ':'"
        )
    return queue


#: A run_step parameter with this name receives what ``setup`` returned.
SETUP_PARAMETER = "setup_res"


@dataclass(frozen=True)
class Parameter:
    """One parameter of a step's ``run_step``: where its value comes from."""

    name: str
    dependency: Dependency | None
    default: Any = inspect.Parameter.empty

    @property
    def is_input(self) -> bool:
        return self.dependency is None and self.name != SETUP_PARAMETER

    @property
    def has_default(self) -> bool:
        return self.default is not inspect.Parameter.empty


def read_parameters(fn: Callable[..., Any], *, skip_self: bool) -> tuple[Parameter, ...]:
    """Classify the parameters of ``fn`` into dependencies, inputs and setup result."""
    params = list(inspect.signature(fn).parameters.values())
    if skip_self and params:
        params = params[1:]
    result = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if isinstance(p.default, Dependency):
            result.append(Parameter(p.name, p.default))
        else:
            result.append(Parameter(p.name, None, p.default))
    return tuple(result)


#: The words of an identifier: a plural acronym (``URLs``), an acronym (``HTTP`` in
#: ``HTTPServer``), or a word with at most one leading capital (``Fetch``, ``add2``).
_WORDS = re.compile(r"[A-Z]{2,}s(?![a-z])|[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+|[0-9]+")


def snake_case(name: str) -> str:
    """``FetchURLs`` -> ``fetch_urls``; ``HTTPServer`` -> ``http_server``; ``Add2`` -> ``add2``."""
    return "_".join(word.lower() for word in _WORDS.findall(name)) or "step"


class Step:
    """A unit of work in a workflow.

    Subclasses implement ``run_step``. Its parameters are filled by name from
    the workflow inputs, or from other steps' results when their default is
    ``Depends(other)``. The lifecycle around it:

    - ``before_all(shared)``: once per scope, before this step first runs in
      it: once per ``Workflow.run``, once per worker (``ProcessEngine``), and
      once for ``Workflow._execute_step`` calls until ``Workflow.close()``.
    - ``setup(shared)``: before each run; a ``setup_res`` parameter of
      ``run_step`` receives what it returns.
    - ``run_step(...)``: the work; its return value is the step's result and
      must be JSON when the step runs on a broker.
    - ``teardown(shared, setup_res, result)``: after a successful run; what it
      returns becomes the result.
    - ``after_all(shared)``: once at the end of that scope (the run ends, the
      worker closes), for each step whose ``before_all`` ran; ``shared`` is empty.

    Any of the four hooks may be ``async def``: it is awaited (``before_all``
    and ``after_all`` in an event loop of their own, since they run outside
    any one step execution).

    ``shared`` maps each predecessor Step to its result.

    ``name`` is the name the user chose (``name=`` or a class attribute), or
    None: a workflow then generates one (:attr:`label`, de-duplicated per
    workflow, see ``Workflow.name_of``) without writing it here, since one
    step may belong to several workflows.

    ``state`` is set by ``Workflow._execute_step`` (the custom-worker
    contract). Engines keep the states of a run in the run itself
    (``Workflow.run_instance(...).steps``, ``broker.get_instance``), never
    here, because one Step object is shared by every run of its workflows.
    """

    #: How many times the broker hands this step to a worker before it gives
    #: up with "worker lost" (a crash, hang or partition costs one claim).
    max_attempts: ClassVar[int] = 3
    name: str | None = None
    #: The queue its runs wait in: a worker claims only the steps of its queues
    #: (``fuseline worker run --queue gpu``), e.g. to keep GPU steps on GPU machines.
    queue: str = DEFAULT_QUEUE

    def __init__(
        self,
        *,
        name: str | None = None,
        policies: Sequence[Policy] | None = None,
        max_attempts: int | None = None,
        queue: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if queue is not None:
            self.queue = queue
        check_queue_name(self.queue)
        if max_attempts is not None:
            if max_attempts < 1:
                raise ValueError("max_attempts must be at least 1")
            self.max_attempts = max_attempts  # type: ignore[misc]
        self.policies: list[Policy] = list(policies or [])
        self.state: Status = Status.PENDING
        # predecessor -> actions of the edge (None = the default edge)
        self._inbound: dict[Step, set[str | None]] = {}
        self.parameters = self._read_parameters()
        for param in self.parameters:
            if param.dependency is not None:
                for target in param.dependency.resolve():
                    self._add_inbound(target, None)

    # -- what the subclass provides -------------------------------------------------
    def before_all(self, shared: dict[Step, Any]) -> None:
        """Called once before this step first runs in a run or worker (awaited if async)."""

    def setup(self, shared: dict[Step, Any]) -> Any:
        """Called before each run; the return value is passed as ``setup_res``."""
        return None

    def run_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement run_step")

    def teardown(self, shared: dict[Step, Any], setup_res: Any, result: Any) -> Any:
        """Called after a successful run; returns the step's result."""
        return result

    def after_all(self, shared: dict[Step, Any]) -> None:
        """Called once when the workflow run ends or the worker stops (awaited if async)."""

    # -- introspection ----------------------------------------------------------------
    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self._body())

    @property
    def kind(self) -> str:
        return "async" if self.is_async else "step"

    @property
    def default_name(self) -> str:
        """The readable name used when none is given: the class name in snake_case."""
        return snake_case(type(self).__name__)

    @property
    def label(self) -> str:
        """The step's own name: the chosen ``name``, else :attr:`default_name`.

        A workflow may de-duplicate it (``add_2``); ``Workflow.name_of(step)``
        is the name within one workflow.
        """
        return self.name or self.default_name

    @property
    def type_name(self) -> str:
        return type(self).__qualname__

    @property
    def predecessors(self) -> list[Step]:
        return list(self._inbound)

    def edge_actions(self, predecessor: Step) -> frozenset[str | None]:
        return frozenset(self._inbound.get(predecessor, ()))

    def _body(self) -> Callable[..., Any]:
        return type(self).run_step

    def _read_parameters(self) -> tuple[Parameter, ...]:
        return read_parameters(type(self).run_step, skip_self=True)

    def _call_body(self, kwargs: dict[str, Any]) -> Any:
        return self.run_step(**kwargs)

    # -- edges ------------------------------------------------------------------------
    def _add_inbound(self, predecessor: Step, action: str | None) -> None:
        if predecessor is self:
            raise ValueError(f"{self!r} cannot depend on itself")
        self._inbound.setdefault(predecessor, set()).add(action)

    def __rshift__(self, other: Any) -> Any:
        """``a >> b``: b runs after a. ``a >> [b, c]`` fans out."""
        for target in as_steps(other, "a >> edge"):
            target._add_inbound(self, None)
        return other

    def __rrshift__(self, other: Any) -> Step:
        """``[a, b] >> c``: c runs after a and b (an AND join)."""
        for source in as_steps(other, "a >> edge"):
            self._add_inbound(source, None)
        return self

    def __sub__(self, action: str) -> _ActionEdge:
        """``a - "approve" >> b``: b runs only when a returns ``"approve"``."""
        if not isinstance(action, str) or not action:
            raise TypeError("a branch action must be a non-empty string: step - 'name' >> target")
        return _ActionEdge(self, action)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


class _ActionEdge:
    """The left half of ``a - "action" >> b``."""

    def __init__(self, source: Step, action: str) -> None:
        self.source = source
        self.action = action

    def __rshift__(self, other: Any) -> Any:
        for target in as_steps(other, "a branch edge"):
            target._add_inbound(self.source, self.action)
        return other


def as_steps(value: Any, context: str) -> tuple[Step, ...]:
    """The Steps that ``value`` names: a Step, a function, or a list/tuple of them.

    The one place where targets are resolved, for ``>>`` edges and for
    ``Depends(...)``: a function becomes its shared :class:`FunctionStep`,
    so every mention of it means the same step. ``context`` names what is
    being built, for the error message.
    """
    items = value if isinstance(value, (list, tuple)) else [value]
    steps: list[Step] = []
    for item in items:
        if isinstance(item, Step):
            steps.append(item)
        elif callable(item):
            steps.append(FunctionStep.for_function(item))
        else:
            raise TypeError(
                f"cannot connect a step to {type(item).__name__}: {context} needs a Step or a function"
            )
    return tuple(steps)


#: The step being executed in this context and its name in the workflow running it.
_RUNNING_AS: ContextVar[tuple[Step, str] | None] = ContextVar("fuseline_running_as", default=None)


@contextmanager
def running_as(step: Step, name: str) -> Iterator[None]:
    """While executing ``step``, its messages use ``name``, its name in the running workflow."""
    token = _RUNNING_AS.set((step, name))
    try:
        yield
    finally:
        _RUNNING_AS.reset(token)


def current_name(step: Step) -> str:
    """``step``'s name in the workflow executing it in this context, else its :attr:`Step.label`.

    Policies receive only the step, not the workflow; this lets their
    messages name the step as the workflow does (``add_2``, not ``add``).
    """
    running = _RUNNING_AS.get()
    if running is not None and running[0] is step:
        return running[1]
    return step.label


class AsyncStep(Step):
    """A step whose ``run_step`` is ``async def``.

    ``setup``, ``teardown``, ``before_all`` and ``after_all`` may be plain or
    async; async ones are awaited. The step runs in its own event loop on the
    worker, so it may await I/O freely.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run_step" in cls.__dict__ and not inspect.iscoroutinefunction(cls.__dict__["run_step"]):
            raise TypeError(f"{cls.__name__}.run_step must be 'async def' in an AsyncStep")


#: function -> a weak reference to its FunctionStep. Both sides are weak: the step
#: holds its function, so a strong value would keep its own key alive forever (every
#: lambda and closure ever used as a step). The step lives as long as something
#: (a workflow, a depending step, the caller) holds it.
_FUNCTION_STEPS: weakref.WeakKeyDictionary[Callable[..., Any], weakref.ref[FunctionStep]] = (
    weakref.WeakKeyDictionary()
)
#: Re-entrant: building a FunctionStep resolves its own ``Depends(other_function)``.
_FUNCTION_STEPS_LOCK = threading.RLock()


class FunctionStep(Step):
    """A plain (or async) function used as a step.

    Its parameters follow the same rules as ``run_step``: workflow inputs by
    name, ``Depends(...)`` defaults for other steps' results.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        policies: Sequence[Policy] | None = None,
        max_attempts: int | None = None,
        queue: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError("FunctionStep needs a callable")
        self.fn = fn
        super().__init__(name=name, policies=policies, max_attempts=max_attempts, queue=queue)

    @classmethod
    def for_function(cls, fn: Callable[..., Any]) -> FunctionStep:
        """The one FunctionStep of ``fn``, so every ``Depends(fn)`` means the same step.

        It is the same object for as long as anything holds it; once nothing
        does, ``fn`` and its step can be freed (nothing could tell a new
        step from the old one).
        """
        with _FUNCTION_STEPS_LOCK:
            ref = _FUNCTION_STEPS.get(fn)
            step = ref() if ref is not None else None
            if step is None:
                step = cls(fn)
                _FUNCTION_STEPS[fn] = weakref.ref(step)
            return step

    @property
    def kind(self) -> str:
        return "async_function" if self.is_async else "function"

    @property
    def default_name(self) -> str:
        return snake_case(getattr(self.fn, "__name__", "function"))

    @property
    def type_name(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)

    def _body(self) -> Callable[..., Any]:
        return self.fn

    def _read_parameters(self) -> tuple[Parameter, ...]:
        return read_parameters(self.fn, skip_self=False)

    def _call_body(self, kwargs: dict[str, Any]) -> Any:
        return self.fn(**kwargs)


class Sleep(Step):
    """A pause of ``seconds`` in a workflow, taken without holding a worker.

    On a broker no worker runs it: it waits in the queue until its time, and
    the broker then completes it itself (its result is None), wherever its
    workers run. ``Workflow.run`` goes through an in-process broker, so no
    thread sleeps there either. The pause counts from the moment the step is
    queued (its predecessors done). ``run_step`` sleeps only for a worker
    that executes the step itself (the worker guide's ``_execute_step``).
    """

    def __init__(self, seconds: float, *, name: str | None = None) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise WorkflowDefinitionError(f"Sleep needs a number of seconds, not {seconds!r}")
        if seconds < 0:
            raise WorkflowDefinitionError(f"Sleep needs 0 seconds or more, not {seconds!r}")
        self.seconds = float(seconds)
        super().__init__(name=name)

    @property
    def kind(self) -> str:
        return "sleep"

    def run_step(self) -> None:
        time.sleep(self.seconds)
