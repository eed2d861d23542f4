"""Brokers: where workflow definitions, instances, step states and leases live.

``SqlBroker`` is imported on first use, so ``import fuseline`` and the
in-memory broker do not load SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..states import Status
from .base import (
    Broker,
    InstanceEvent,
    InstanceInfo,
    Lease,
    Reason,
    StepAssignment,
    StepExplanation,
    StepInfo,
    StepReport,
    WorkerInfo,
)
from .dispatching import Dispatch
from .memory import MemoryBroker
from .schedules import ScheduleInfo, ScheduleSpec

if TYPE_CHECKING:
    from .sql import SqlBroker

__all__ = [
    "Broker",
    "Dispatch",
    "InstanceEvent",
    "InstanceInfo",
    "Lease",
    "MemoryBroker",
    "Reason",
    "ScheduleInfo",
    "ScheduleSpec",
    "SqlBroker",
    "Status",
    "StepAssignment",
    "StepExplanation",
    "StepInfo",
    "StepReport",
    "WorkerInfo",
]


def __getattr__(name: str) -> Any:
    if name == "SqlBroker":
        from .sql import SqlBroker

        return SqlBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
