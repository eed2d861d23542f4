"""Statements only the web dashboard runs: instance counts, workflow definitions, session checks.

Each is one indexed read; the dashboard caches what they return for a second or two per
server process, so a page viewed by many people costs the database about the same as one.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import Select, bindparam, func, select

from ..dialects import dialect_of
from ..models import instances, tokens, workflows


class DashboardQueries:
    def __init__(self) -> None:
        #: Instances per status, all workflows (one GROUP BY over the status index).
        self.status_counts: Select = select(instances.c.status, func.count()).group_by(instances.c.status)
        #: Instances per status of one workflow.
        self.status_counts_of_workflow: Select = (
            select(instances.c.status, func.count())
            .where(instances.c.workflow_id == bindparam("p_workflow_id"))
            .group_by(instances.c.status)
        )
        #: The stored definition an instance runs (to draw its graph).
        self.definition: Select = select(workflows.c.definition).where(
            workflows.c.workflow_id == bindparam("p_workflow_id"),
            workflows.c.version == bindparam("p_version"),
        )
        #: A signed-in token, if it is still live: a revoked one returns no row.
        self.live_token: Select = select(tokens.c.name, tokens.c.role).where(
            tokens.c.id == bindparam("p_token_id"), tokens.c.revoked_at.is_(None)
        )


@cache
def for_dialect(name: str) -> DashboardQueries:
    dialect_of(name)  # refuses a database fuseline does not support, like every query module
    return DashboardQueries()
