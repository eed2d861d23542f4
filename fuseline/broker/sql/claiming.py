"""Claiming queued steps: from the floors on, reaping expired leases on the way.

Two sources claim: :class:`OneStatementClaims` (PostgreSQL: a batch in one
statement of :mod:`.pg_statements`, read from the claim floors) and
:class:`TransactionClaims` (the general path: one transaction with the Core
statements of :mod:`.queries.claims`). The broker picks one when it is built.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ...states import EventKind
from ..base import StepAssignment
from . import pg_statements
from .claimfloor import ClaimFloors
from .database import Database, PostgresDatabase
from .history import History
from .leases import HeldLeases, Reaper
from .queries.claims import ClaimQueries
from .queries.events import EventQueries
from .queries.workers import WorkerQueries
from .rows import ClaimRow, results_object
from .workers import WorkerRegistry

Key = tuple[str, str]
Floors = Sequence[datetime | None]


class ClaimSource(Protocol):
    def claim(self, worker_id: str, keys: Sequence[Key], floors: Floors, limit: int) -> list[ClaimRow]:
        """Up to ``limit`` steps of these workflows, in queue order; none for a dead worker."""


@dataclass
class OneStatementClaims:
    """PostgreSQL: the claim statements of :mod:`.pg_statements`, each one round trip."""

    db: PostgresDatabase
    lease_seconds: float
    dead_after: float

    def params(self, worker_id: str, keys: Sequence[Key], floors: Floors) -> dict[str, Any]:
        """Parameters of the claim statements: one workflow, or parallel arrays for several."""
        params: dict[str, Any] = {
            "p_worker_id": worker_id,
            "p_lease_seconds": self.lease_seconds,
            "p_dead_after": self.dead_after,
            "p_seen_every": self.dead_after / 6,
        }
        if len(keys) == 1:
            params.update(p_workflow_id=keys[0][0], p_version=keys[0][1], p_floor=floors[0])
        else:
            params.update(
                p_workflow_ids=[k[0] for k in keys], p_versions=[k[1] for k in keys], p_floors=list(floors)
            )
        return params

    def claim(self, worker_id: str, keys: Sequence[Key], floors: Floors, limit: int) -> list[ClaimRow]:
        params = self.params(worker_id, keys, floors)
        if limit == 1:
            one = len(keys) == 1
            sql = pg_statements.step_claim_one_workflow if one else pg_statements.step_claim_many_workflows
        else:
            params["p_limit"] = limit
            sql = (
                pg_statements.steps_claim_batch_one_workflow
                if len(keys) == 1
                else pg_statements.steps_claim_batch_many_workflows
            )
        return [ClaimRow.of(row) for row in self.db.rows(sql, params)]


@dataclass
class TransactionClaims:
    """The general path: claim, read the inputs and results, log, in one transaction per claim."""

    db: Database
    claims: ClaimQueries
    workers: WorkerQueries
    events: EventQueries
    lease_seconds: float
    dead_after: float

    def claim(self, worker_id: str, keys: Sequence[Key], floors: Floors, limit: int) -> list[ClaimRow]:
        claimed: list[ClaimRow] = []
        while len(claimed) < limit:
            row = self._claim_one(worker_id, keys)
            if row is None:
                break
            claimed.append(row)
        return claimed

    def _claim_one(self, worker_id: str, keys: Sequence[Key]) -> ClaimRow | None:
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_lease_seconds": self.lease_seconds}
        if len(keys) == 1:
            statement = self.claims.step_claim_one_workflow
            params.update(p_workflow_id=keys[0][0], p_version=keys[0][1])
        else:
            statement = self.claims.step_claim_many_workflows
            params["p_keys"] = list(keys)
        with self.db.transaction() as conn:
            alive = {"p_worker_id": worker_id, "p_dead_after": self.dead_after}
            if conn.execute(self.workers.worker_is_alive, alive).first() is None:
                return None
            conn.execute(self.workers.worker_seen, {**alive, "p_seen_every": self.dead_after / 6})
            row = conn.execute(statement, params).first()
            if row is None:
                return None
            inputs = conn.execute(
                self.claims.instance_inputs, {"p_instance_id": row.instance_id}
            ).scalar_one()
            names = json.loads(row.inputs_from) if row.inputs_from else []
            results: dict[str, str | None] = {}
            if names:
                found = conn.execute(
                    self.claims.step_results, {"p_instance_id": row.instance_id, "p_names": names}
                )
                results = {r.name: r.result for r in found}
            history = History()
            history.add(row.instance_id, EventKind.CLAIMED, row.name, row.attempt, worker_id)
            history.write(conn, self.events)
        return ClaimRow.of(
            (
                row.instance_id,
                row.workflow_id,
                row.version,
                row.name,
                row.attempt,
                row.started_at,
                row.lease_expires_at,
                inputs,
                results_object(results),
                row.available_at,
            )
        )


@dataclass
class Claimer:
    """Hands queued steps to a worker: reaping when due, from the floors on, refusing the dead."""

    source: ClaimSource
    floors: ClaimFloors
    reaper: Reaper
    workers: WorkerRegistry
    held: HeldLeases

    def claim(self, worker_id: str, limit: int) -> list[StepAssignment]:
        """Up to ``limit`` steps for the worker, in queue order; WorkerExpired if it is dead."""
        keys = self.workers.keys_of(worker_id)
        if not keys:
            return []
        rows = self.reaper.reaping(lambda: self.from_floors(worker_id, keys, limit))
        if not rows:
            self.workers.check_alive(worker_id)
            return []
        assignments = [row.assignment() for row in rows]
        self.held.hand(worker_id, assignments)
        return assignments

    def from_floors(self, worker_id: str, keys: Sequence[Key], limit: int) -> list[ClaimRow]:
        """Claim above the floors of :class:`.claimfloor.ClaimFloors`, and from the start when that
        finds nothing and no full scan ran for a second. The floors follow the claim."""
        floors = self.floors.for_next_claim(keys)
        rows = self.source.claim(worker_id, keys, floors, limit)
        if not rows and any(f is not None for f in floors) and self.floors.rescan_when_empty():
            rows = self.source.claim(worker_id, keys, [None] * len(keys), limit)
        self.follow(rows)
        return rows

    def follow(self, rows: Sequence[ClaimRow]) -> None:
        self.floors.follow([(row.workflow_id, row.version, row.available_at) for row in rows])
