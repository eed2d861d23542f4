"""Authoring workflows: steps, dependencies, policies, the workflow and its schema (no I/O here).

Running a whole workflow needs a :class:`Runner`; :mod:`fuseline.engines`
registers ``PoolEngine`` as the default when imported (``import fuseline``
does that). This package imports no engine and no broker.
"""

from .dependencies import Computed, Condition, Dependency, Depends
from .execution import Outcome
from .lifecycle import StepLifecycle
from .policies import Policy, RetryPolicy, StepPolicy, StepTimeoutPolicy, WorkflowPolicy, policy_from_config
from .runner import NoRunner, Runner, WorkflowRun, default_runner, set_default_runner
from .scheduling import ConcurrencyLimit, RateLimit, SchedulingPolicy
from .schema import WorkflowSchema
from .shapes import Map, SubWorkflow, WaitFor
from .step import AsyncStep, FunctionStep, Sleep, Step
from .workflow import Workflow, workflow_from_functions

__all__ = [
    "AsyncStep",
    "Computed",
    "ConcurrencyLimit",
    "Condition",
    "Dependency",
    "Depends",
    "FunctionStep",
    "Map",
    "NoRunner",
    "Outcome",
    "Policy",
    "RateLimit",
    "RetryPolicy",
    "Runner",
    "SchedulingPolicy",
    "Sleep",
    "Step",
    "StepLifecycle",
    "StepPolicy",
    "StepTimeoutPolicy",
    "SubWorkflow",
    "WaitFor",
    "Workflow",
    "WorkflowPolicy",
    "WorkflowRun",
    "WorkflowSchema",
    "default_runner",
    "policy_from_config",
    "set_default_runner",
    "workflow_from_functions",
]
