"""Statements on workflow definitions (``fuseline_workflows``)."""

from __future__ import annotations

from functools import cache

from sqlalchemy import Insert, Select, bindparam, select

from ..dialects import Dialect, dialect_of
from ..models import workflows


class DefinitionQueries:
    def __init__(self, dialect: Dialect) -> None:
        #: Store a definition unless one exists under the same key (then compare hashes).
        self.workflow_insert: Insert = dialect.insert_ignoring_conflicts(workflows)
        self.workflow_get: Select = select(workflows.c.schema_hash, workflows.c.definition).where(
            workflows.c.workflow_id == bindparam("p_workflow_id"),
            workflows.c.version == bindparam("p_version"),
        )


@cache
def for_dialect(name: str) -> DefinitionQueries:
    return DefinitionQueries(dialect_of(name))
