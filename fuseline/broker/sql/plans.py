"""Workflow definitions: stored once per (workflow_id, version), cached as plans per broker."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from ...errors import SchemaConflict, UnknownWorkflow
from ...workflow.schema import WorkflowSchema
from ..dag import WorkflowPlan
from .queries.definitions import DefinitionQueries

Key = tuple[str, str]


@dataclass
class PlanCache:
    """The plans this broker has stored or read. Definitions never change under a key (a
    changed one is refused), so a cached plan never goes stale."""

    queries: DefinitionQueries
    _plans: dict[Key, WorkflowPlan] = field(default_factory=dict, init=False)

    def cached(self, key: Key) -> WorkflowPlan | None:
        return self._plans.get(key)

    def store(self, conn: Connection, schemas: Iterable[WorkflowSchema]) -> dict[Key, WorkflowPlan]:
        """Insert new definitions, refusing changed ones; returns the plans of all of them.

        The caller :meth:`remember` s them only after its transaction commits, so a
        rolled-back registration leaves no trace in this process either.
        """
        plans: dict[Key, WorkflowPlan] = {}
        for schema in schemas:
            known = self._plans.get(schema.key)
            if known is not None:
                if known.hash != schema.hash:
                    raise SchemaConflict(schema.workflow_id, schema.version)
                plans[schema.key] = known
                continue
            conn.execute(
                self.queries.workflow_insert,
                {
                    "workflow_id": schema.workflow_id,
                    "version": schema.version,
                    "schema_hash": schema.hash,
                    "definition": schema.to_json(),
                },
            )
            stored = conn.execute(
                self.queries.workflow_get, {"p_workflow_id": schema.workflow_id, "p_version": schema.version}
            ).one()
            if stored.schema_hash != schema.hash:
                raise SchemaConflict(schema.workflow_id, schema.version)
            plans[schema.key] = WorkflowPlan(schema)
        return plans

    def remember(self, plans: dict[Key, WorkflowPlan]) -> None:
        self._plans.update(plans)

    def get(self, conn: Connection, key: Key) -> WorkflowPlan:
        """The plan of a stored definition; UnknownWorkflow if there is none."""
        plan = self._plans.get(key)
        if plan is None:
            row = conn.execute(
                self.queries.workflow_get, {"p_workflow_id": key[0], "p_version": key[1]}
            ).first()
            if row is None:
                raise UnknownWorkflow(*key)
            plan = WorkflowPlan(WorkflowSchema.from_json(row.definition))
            self._plans[key] = plan
        return plan
