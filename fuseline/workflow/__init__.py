"""Authoring workflows: steps, dependencies, the workflow and its schema (no I/O here)."""

from .dependencies import Computed, Condition, Dependency, Depends
from .schema import WorkflowSchema
from .step import AsyncStep, FunctionStep, Step
from .workflow import Workflow, workflow_from_functions

__all__ = [
    "AsyncStep",
    "Computed",
    "Condition",
    "Dependency",
    "Depends",
    "FunctionStep",
    "Step",
    "Workflow",
    "WorkflowSchema",
    "workflow_from_functions",
]
