"""fuseline: durable workflow orchestration on a SQL database.

Write workflows as DAGs of Python steps, run them in-process with
``Workflow.run``, or dispatch them to a broker (PostgreSQL, SQLite, memory)
and let any number of workers run the steps.
"""

from . import engines  # noqa: F401 - its import registers PoolEngine as Workflow.run's default runner
from ._version import __version__
from .broker.base import StepAssignment, StepReport
from .states import Status
from .workflow import (
    AsyncStep,
    Computed,
    Condition,
    Depends,
    FunctionStep,
    Map,
    Sleep,
    Step,
    SubWorkflow,
    WaitFor,
    Workflow,
    WorkflowRun,
    WorkflowSchema,
    workflow_from_functions,
)

__all__ = [
    "AsyncStep",
    "Computed",
    "Condition",
    "Depends",
    "FunctionStep",
    "Map",
    "Sleep",
    "Status",
    "Step",
    "StepAssignment",
    "StepReport",
    "SubWorkflow",
    "WaitFor",
    "Workflow",
    "WorkflowRun",
    "WorkflowSchema",
    "__version__",
    "workflow_from_functions",
]
