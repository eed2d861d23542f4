"""Policies attached to steps and workflows (this import path is part of the public API).

They live with the workflow model in :mod:`fuseline.workflow.policies`, which
holds the one registry that :func:`policy_from_config` reads; this module
re-exports the public names.
"""

from __future__ import annotations

from .workflow.policies import (
    Policy,
    RetryPolicy,
    StepPolicy,
    StepTimeoutPolicy,
    TooManyAbandonedThreads,
    WorkflowPolicy,
    policy_from_config,
)
from .workflow.scheduling import ConcurrencyLimit, RateLimit, SchedulingPolicy

__all__ = [
    "ConcurrencyLimit",
    "Policy",
    "RateLimit",
    "RetryPolicy",
    "SchedulingPolicy",
    "StepPolicy",
    "StepTimeoutPolicy",
    "TooManyAbandonedThreads",
    "WorkflowPolicy",
    "policy_from_config",
]
