"""Typed dependencies between steps: ``Depends``, ``Computed`` and ``Condition``.

A step declares what it consumes in the signature of ``run_step``::

    def run_step(self, total: Computed[int] = Depends(add)) -> int: ...

Declaring the dependency is what adds the edge ``add >> step``; the broker
then hands the step the result of ``add`` when it runs. ``Depends([a, b])``
is an OR join (the first of ``a``/``b`` to succeed supplies the value) and
``Depends(a, condition=...)`` skips the step when the condition is false.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

if TYPE_CHECKING:
    from .step import Step

T = TypeVar("T")


class _ComputedMarker:
    """Marks an annotation as "value computed by another step"."""

    def __repr__(self) -> str:
        return "Computed"


COMPUTED = _ComputedMarker()

#: ``Computed[int]`` reads as "an int produced by another step". Type checkers
#: see plain ``int``; fuseline sees the marker.
Computed = Annotated[T, COMPUTED]


class Condition:
    """A named predicate over a dependency's value.

    Plain callables work as conditions too; wrapping one in ``Condition``
    gives it a description (shown in the workflow schema) and lets conditions
    be combined with ``&``, ``|`` and ``~``.
    """

    def __init__(self, predicate: Callable[[Any], bool], description: str | None = None) -> None:
        if not callable(predicate):
            raise TypeError("Condition needs a callable predicate")
        self.predicate = predicate
        self.description = description or _describe_callable(predicate)

    def __call__(self, value: Any) -> bool:
        return bool(self.predicate(value))

    def __and__(self, other: Callable[[Any], bool]) -> Condition:
        right = as_condition(other)
        return Condition(lambda v: self(v) and right(v), f"({self.description}) and ({right.description})")

    def __or__(self, other: Callable[[Any], bool]) -> Condition:
        right = as_condition(other)
        return Condition(lambda v: self(v) or right(v), f"({self.description}) or ({right.description})")

    def __invert__(self) -> Condition:
        return Condition(lambda v: not self(v), f"not ({self.description})")

    def __repr__(self) -> str:
        return f"Condition({self.description!r})"


def as_condition(predicate: Callable[[Any], bool]) -> Condition:
    return predicate if isinstance(predicate, Condition) else Condition(predicate)


def _describe_callable(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name or type(fn).__name__


@dataclass(frozen=True, eq=False)
class Dependency:
    """What ``Depends(...)`` returns: the target step(s) and an optional condition.

    ``targets`` holds Step objects or plain functions (turned into
    :class:`~fuseline.FunctionStep` when the depending step is built).
    """

    targets: tuple[Any, ...]
    any_of: bool
    condition: Condition | None

    def resolve(self) -> tuple[Step, ...]:
        """The target steps, with functions wrapped in their shared FunctionStep."""
        from .step import as_steps  # step.py imports this module

        return as_steps(self.targets, "Depends()")


def Depends(  # noqa: N802 - reads like a type in signatures, as in FastAPI
    target: Any,
    *,
    condition: Callable[[Any], bool] | None = None,
) -> Any:
    """Declare that a ``run_step`` parameter is the result of another step.

    ``target`` is a Step, a function (run as a :class:`~fuseline.FunctionStep`),
    or a list of them for an OR join. ``condition`` is called with the value;
    when it returns false the step ends SKIPPED without running.
    """
    if isinstance(target, (list, tuple)):
        if not target:
            raise ValueError("Depends([...]) needs at least one step")
        targets: Sequence[Any] = tuple(target)
        any_of = True
    else:
        targets = (target,)
        any_of = False
    return Dependency(
        targets=tuple(targets),
        any_of=any_of,
        condition=as_condition(condition) if condition is not None else None,
    )
