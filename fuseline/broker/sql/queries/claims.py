"""Statements that claim queued steps (``fuseline_steps``), and what a claim hands out.

The general path: one transaction checks that the worker is alive, claims
with :attr:`ClaimQueries.step_claim_one_workflow` (or ``_many_workflows``),
then reads the instance inputs and the predecessors' results. PostgreSQL's
one-statement twins are in :mod:`..pg_statements`.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import ColumnElement, Select, Update, and_, bindparam, select, tuple_, update

from ....states import Status
from ..dialects import Dialect, dialect_of
from ..models import instances, steps

QUEUED = Status.QUEUED.value


class ClaimQueries:
    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.step_claim_one_workflow: Update = self._claim(
            and_(
                steps.c.workflow_id == bindparam("p_workflow_id"),
                steps.c.version == bindparam("p_version"),
            )
        )
        self.step_claim_many_workflows: Update = self._claim(
            tuple_(steps.c.workflow_id, steps.c.version).in_(bindparam("p_keys", expanding=True))
        )
        self.instance_inputs: Select = select(instances.c.inputs).where(
            instances.c.id == bindparam("p_instance_id")
        )
        #: Results of named steps of an instance (a claim's predecessors, an instance's outputs).
        self.step_results: Select = select(steps.c.name, steps.c.result).where(
            steps.c.instance_id == bindparam("p_instance_id"),
            steps.c.name.in_(bindparam("p_names", expanding=True)),
        )

    def _claim(self, workflow_filter: ColumnElement[bool]) -> Update:
        """Claim the QUEUED step of the worker's workflows that became available first.

        PostgreSQL skips rows another claimer holds (SKIP LOCKED), so workers
        never wait on each other and never get the same step; SQLite runs it
        inside ``BEGIN IMMEDIATE``, alone.
        """
        now = self.dialect.now()
        candidate = (
            select(steps.c.id)
            .where(steps.c.state == QUEUED, workflow_filter, steps.c.available_at <= now)
            .order_by(steps.c.available_at, steps.c.id)
            .limit(1)
        )
        if self.dialect.skip_locked:
            candidate = candidate.with_for_update(skip_locked=True)
        return (
            update(steps)
            .where(steps.c.id == candidate.scalar_subquery(), steps.c.state == QUEUED)
            .values(
                state=Status.RUNNING.value,
                attempt=steps.c.attempt + 1,
                worker_id=bindparam("p_worker_id"),
                lease_expires_at=self.dialect.now_plus(bindparam("p_lease_seconds")),
                started_at=now,
            )
            .returning(
                steps.c.instance_id,
                steps.c.workflow_id,
                steps.c.version,
                steps.c.name,
                steps.c.attempt,
                steps.c.inputs_from,
                steps.c.started_at,
                steps.c.lease_expires_at,
                steps.c.available_at,
            )
        )


@cache
def for_dialect(name: str) -> ClaimQueries:
    return ClaimQueries(dialect_of(name))
