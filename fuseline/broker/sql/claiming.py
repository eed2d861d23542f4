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

from sqlalchemy import Connection

from ..base import StepAssignment
from ..scheduling import item_base
from . import pg_statements
from .claimfloor import ClaimFloors
from .database import Database, PostgresDatabase
from .leases import HeldLeases, Reaper
from .queries.claims import ClaimQueries
from .queries.workers import WorkerQueries
from .rows import ClaimRow, results_object
from .timers import Timers
from .workers import WorkerRegistry

Key = tuple[str, str, str]  # workflow_id, version, queue
#: The general path reads at least this many candidates, so a few gated ones held back by
#: their limits do not hide the claimable steps behind them.
SCAN_AT_LEAST = 16
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
            params.update(
                p_workflow_id=keys[0][0], p_version=keys[0][1], p_queue=keys[0][2], p_floor=floors[0]
            )
        else:
            params.update(
                p_workflow_ids=[k[0] for k in keys],
                p_versions=[k[1] for k in keys],
                p_queues=[k[2] for k in keys],
                p_floors=list(floors),
            )
        return params

    def claim(self, worker_id: str, keys: Sequence[Key], floors: Floors, limit: int) -> list[ClaimRow]:
        params = self.params(worker_id, keys, floors)
        if limit == 1:
            one = len(keys) == 1
            sql = pg_statements.step_claim_one_workflow if one else pg_statements.step_claim_many_workflows
            return [ClaimRow.of(row) for row in self.db.rows(sql, params)]
        params["p_limit"] = limit
        sql = (
            pg_statements.steps_claim_batch_one_workflow
            if len(keys) == 1
            else pg_statements.steps_claim_batch_many_workflows
        )
        _, rows = self.db.together([(pg_statements.generic_plan_for_this_transaction, {}), (sql, params)])
        return [ClaimRow.of(row) for row in rows]


@dataclass
class TransactionClaims:
    """The general path: in one transaction, read the first candidates in queue order, check the
    limits of those a limit gates (:class:`Gate`), claim, read inputs and results
    (a claim writes no event: the step row holds it, :mod:`.history`)."""

    db: Database
    claims: ClaimQueries
    workers: WorkerQueries
    lease_seconds: float
    dead_after: float

    def claim(self, worker_id: str, keys: Sequence[Key], floors: Floors, limit: int) -> list[ClaimRow]:
        alive = {"p_worker_id": worker_id, "p_dead_after": self.dead_after}
        claimed: list[ClaimRow] = []
        with self.db.transaction() as conn:
            if conn.execute(self.workers.worker_is_alive, alive).first() is None:
                return []
            conn.execute(self.workers.worker_seen, {**alive, "p_seen_every": self.dead_after / 6})
            scan = self.claims.candidate_params(keys, max(limit * 4, SCAN_AT_LEAST))
            gate = Gate(conn, self.claims)
            for candidate in conn.execute(self.claims.candidates(keys), scan).all():
                if candidate.gated and not gate.admits(candidate):
                    continue
                row = self._claim(conn, worker_id, candidate)
                if row is None:
                    continue
                claimed.append(row)
                if len(claimed) == limit:
                    break
        return claimed

    def _claim(self, conn: Connection, worker_id: str, candidate: Any) -> ClaimRow | None:
        params = {"p_id": candidate.id, "p_worker_id": worker_id, "p_lease_seconds": self.lease_seconds}
        row = conn.execute(self.claims.step_claim, params).first()
        if row is None:
            return None
        if candidate.rate_n is not None:
            conn.execute(
                self.claims.start_insert,
                {
                    "workflow_id": row.workflow_id,
                    "step_name": item_base(row.name),
                    "limit_key": candidate.limit_key,
                },
            )
        if candidate.instance_started is None:
            conn.execute(self.claims.instance_mark_started, {"p_instance_id": row.instance_id})
        inputs = conn.execute(self.claims.instance_inputs, {"p_instance_id": row.instance_id}).scalar_one()
        names = json.loads(row.inputs_from) if row.inputs_from else []
        results: dict[str, str | None] = {}
        if names:
            found = conn.execute(
                self.claims.step_results, {"p_instance_id": row.instance_id, "p_names": names}
            )
            results = {r.name: r.result for r in found}
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
                row.urgency,
                row.queue,
                row.item,
            )
        )


@dataclass
class Gate:
    """Whether a candidate's limits let it start now, counted from live rows in this transaction.

    On PostgreSQL each limit is first locked for the transaction (``pg_try_advisory_xact_lock``;
    a limit another claimer is deciding on is skipped, never waited for), and counted by a later
    statement, whose snapshot sees every claim of that limit committed before: so two claimers
    never both take the last slot. Claims made earlier in this transaction count too. SQLite
    runs one writer at a time.
    """

    conn: Connection
    claims: ClaimQueries

    def admits(self, c: Any) -> bool:
        step = item_base(c.name)  # a Map's items count under their step's limits
        name = {"p_workflow_id": c.workflow_id, "p_name": step, "p_limit_key": c.limit_key}
        if c.concurrency_max is not None:
            if not self._lock(f"c|{c.workflow_id}|{step}|{c.limit_key}"):
                return False
            if self.conn.execute(self.claims.steps_running_of_limit, name).scalar_one() >= c.concurrency_max:
                return False
        if c.rate_n is not None:
            if not self._lock(f"r|{c.workflow_id}|{step}|{c.limit_key}"):
                return False
            count, _ = self.conn.execute(self.claims.starts_in_window, {**name, "p_per": c.rate_per}).one()
            if count >= c.rate_n:
                return False
        if c.instance_concurrency_max is not None and c.instance_started is None:
            if not self._lock(f"w|{c.workflow_id}|{c.instance_limit_key}"):
                return False
            held = {"p_workflow_id": c.workflow_id, "p_limit_key": c.instance_limit_key}
            if self.conn.execute(self.claims.instances_in_progress_of_limit, held).scalar_one() >= (
                c.instance_concurrency_max
            ):
                return False
        return True

    def _lock(self, name: str) -> bool:
        statement = self.claims.limit_lock()
        return statement is None or bool(self.conn.execute(statement, {"p_lock": name}).scalar_one())


@dataclass
class Claimer:
    """Hands queued steps to a worker: reaping when due, from the floors on, refusing the dead."""

    source: ClaimSource
    #: Claims for workers whose workflows have limits: the general path, checking each candidate.
    gated: ClaimSource
    floors: ClaimFloors
    reaper: Reaper
    timers: Timers
    workers: WorkerRegistry
    held: HeldLeases

    def claim(self, worker_id: str, limit: int) -> list[StepAssignment]:
        """Up to ``limit`` steps for the worker, in queue order; WorkerExpired if it is dead."""
        serving = self.workers.keys_of(worker_id)
        self.timers.complete_due(serving.workflows)
        if not serving:
            return []
        if serving.gated:
            claim = lambda: self.gated.claim(worker_id, serving.keys, [], limit)  # noqa: E731
        else:
            claim = lambda: self.from_floors(worker_id, serving.keys, limit)  # noqa: E731
        rows = self.reaper.reaping(claim)
        if not rows:
            self.workers.check_alive(worker_id)
            return []
        assignments = [row.assignment() for row in rows]
        self.held.hand(worker_id, assignments)
        return assignments

    def from_floors(self, worker_id: str, keys: Sequence[Key], limit: int) -> list[ClaimRow]:
        """Claim above the floors of :class:`.claimfloor.ClaimFloors`, and from the start when that
        finds nothing and no full scan ran for a second. The floors follow the claim."""
        ticket = self.floors.ticket()
        floors = self.floors.for_next_claim(keys)
        rows = self.source.claim(worker_id, keys, floors, limit)
        if not rows and any(f is not None for f in floors) and self.floors.rescan_when_empty():
            rows = self.source.claim(worker_id, keys, [None] * len(keys), limit)
        self.follow(rows, ticket)
        return rows

    def follow(self, rows: Sequence[ClaimRow], ticket: int) -> None:
        """Move the floors after a claim that started at ``ticket`` (see ClaimFloors.follow)."""
        self.floors.follow(
            [((row.workflow_id, row.version, row.queue), row.urgency, row.available_at) for row in rows],
            ticket,
        )
