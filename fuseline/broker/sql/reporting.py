"""Accepting reports: fenced by the lease, then the rules move the instance on.

A report is prepared once (:class:`PreparedReport`: state, ids checked,
result encoded, whether a one-statement form applies). PostgreSQL then tries
that form (:class:`OneStatementReports`): a success whose consequences
depend on no other step's state is one statement. Whatever it does not
accept, and every report elsewhere, takes the general path: one transaction
that locks the instance, applies the fenced write and the rules, or
explains the refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from sqlalchemy import Connection

from ...errors import (
    BrokerError,
    DatabaseError,
    LeaseLost,
    ReportConflict,
    ResultNotSerializable,
    ResultTooLarge,
    UnknownInstance,
    UnknownStep,
    UnknownWorker,
    UnknownWorkflow,
)
from ...states import EventKind, Status
from .. import codec
from ..base import StepAssignment, StepReport
from ..dag import FastReport, WorkflowPlan
from ..ids import instance_uuid, worker_uuid
from ..reports import NO_ERROR_TEXT, reported_state, why_not_held
from ..scheduling import item_base
from ..shapes import map_problem
from . import pg_statements
from .claiming import Claimer, OneStatementClaims
from .database import Database, PostgresDatabase
from .history import History
from .leases import HeldLeases
from .plans import PlanCache
from .queries.events import EventQueries
from .queries.reports import ReportQueries
from .rows import ClaimRow
from .rules import InstanceRules
from .workers import WorkerRegistry

#: The parallel arrays of ``steps_succeed_batch``.
_BATCH_ARRAYS = (
    *("p_ns", "p_instance_ids", "p_workflow_ids", "p_versions", "p_names", "p_attempts", "p_results"),
    *("p_finishes", "p_q_ns", "p_q_names", "p_q_consumers", "p_q_inputs_from", "p_items_of"),
)


@dataclass(slots=True)
class PreparedReport:
    """A report checked and encoded once, whichever path then records it."""

    worker_id: str
    report: StepReport
    state: Status
    #: The result as stored JSON text (None unless SUCCEEDED).
    result: str | None
    error: str | None
    #: What the one-statement path does with this success, when it applies (else None).
    fast: FastReport | None
    #: A failure the worker reported (a RetryPolicy retries those; not a result the broker refused).
    retryable: bool = False

    def one_statement_params(self) -> dict[str, Any]:
        """Parameters of ``step_succeed_and_queue`` / ``step_succeed_and_finish``."""
        report = self.report
        params: dict[str, Any] = {
            "p_instance_id": report.instance_id,
            "p_workflow_id": report.workflow_id,
            "p_version": report.version,
            "p_name": report.step_name,
            "p_worker_id": self.worker_id,
            "p_attempt": report.attempt,
            "p_result": self.result,
        }
        if self.fast is not None and self.fast.map_item is not None:
            params["p_item_of"] = self.fast.map_item
        elif self.fast is not None and not self.fast.finalizes:
            params.update(
                p_queue=list(self.fast.queue),
                p_consumers=list(self.fast.consumers),
                p_inputs_from=self.fast.consumed_as,
            )
        return params

    def one_statement(self) -> str:
        assert self.fast is not None
        if self.fast.map_item is not None:
            return pg_statements.item_succeed
        return (
            pg_statements.step_succeed_and_finish
            if self.fast.finalizes
            else pg_statements.step_succeed_and_queue
        )


@dataclass
class OneStatementReports:
    """PostgreSQL: successes as single statements, alone, in a batch, or followed by a claim."""

    db: PostgresDatabase
    claims: OneStatementClaims

    def succeed(self, prepared: PreparedReport) -> Any:
        """Accept a success: its row (for a Map item, with how many of its map's items are left
        open); None if the worker does not hold the step (nothing changed)."""
        rows = self.db.rows(prepared.one_statement(), prepared.one_statement_params())
        return rows[0] if rows else None

    def succeed_batch(self, batch: Sequence[PreparedReport]) -> list[tuple[bool, int | None]]:
        """Several successes in one statement and one durable commit; per report, whether it was
        accepted and, for a Map item, how many of its map's items this statement saw open."""
        arrays: dict[str, list[Any]] = {name: [] for name in _BATCH_ARRAYS}
        for n, prepared in enumerate(batch):
            report, fast = prepared.report, prepared.fast
            assert fast is not None
            arrays["p_ns"].append(n)
            arrays["p_instance_ids"].append(report.instance_id)
            arrays["p_workflow_ids"].append(report.workflow_id)
            arrays["p_versions"].append(report.version)
            arrays["p_names"].append(report.step_name)
            arrays["p_attempts"].append(report.attempt)
            arrays["p_results"].append(prepared.result)
            arrays["p_finishes"].append(fast.finalizes)
            arrays["p_items_of"].append(fast.map_item)
            for successor in fast.queue:
                arrays["p_q_ns"].append(n)
                arrays["p_q_names"].append(successor)
                arrays["p_q_consumers"].append(successor in fast.consumers)
                arrays["p_q_inputs_from"].append(fast.consumed_as)
        rows = self.db.rows(pg_statements.steps_succeed_batch, {"p_worker_id": batch[0].worker_id, **arrays})
        accepted = {row[0]: row[2] for row in rows}  # n -> a Map item's open items (else None)
        return [(n in accepted, accepted.get(n)) for n in range(len(batch))]

    def succeed_then_claim(
        self, prepared: PreparedReport, key: tuple[str, str, str], floor: Any
    ) -> tuple[Any, ClaimRow | None]:
        """A success and the same worker's next claim (taken only if the report was accepted),
        in one transaction and one round trip. The claim sees the successors the report queued,
        and the transaction commits durably, once. Returns the report's row (None: refused)."""
        claim = {
            **self.claims.params(prepared.worker_id, [key], [floor]),
            "p_instance_id": prepared.report.instance_id,
            "p_name": prepared.report.step_name,
            "p_attempt": prepared.report.attempt,
        }
        reported, claimed = self.db.together(
            [
                (prepared.one_statement(), prepared.one_statement_params()),
                (pg_statements.step_claim_after_report, claim),
            ]
        )
        return (reported[0] if reported else None), ClaimRow.of(claimed[0]) if claimed else None


@dataclass
class Reporter:
    """Records the reports of workers: the one-statement path where it applies, else the general one."""

    db: Database
    queries: ReportQueries
    events: EventQueries
    rules: InstanceRules
    plans: PlanCache
    workers: WorkerRegistry
    held: HeldLeases
    claimer: Claimer
    #: PostgreSQL's one-statement successes; None where there are none (SQLite, fast_paths=False).
    one_statement: OneStatementReports | None
    max_result_bytes: int

    def prepare(self, worker_id: str, report: StepReport) -> PreparedReport:
        state = reported_state(report)
        worker_uuid(worker_id)
        instance_uuid(report.instance_id)
        result, error = None, report.error
        if state is Status.SUCCEEDED:
            try:
                result = codec.encode_result(report.step_name, report.result, self.max_result_bytes)
            except (ResultNotSerializable, ResultTooLarge) as exc:
                state, error = Status.FAILED, str(exc)
        elif state is Status.FAILED and not error:
            error = NO_ERROR_TEXT
        retryable = state is Status.FAILED and reported_state(report) is Status.FAILED
        return PreparedReport(worker_id, report, state, result, error, self._fast(report, state), retryable)

    def _fast(self, report: StepReport, state: Status) -> FastReport | None:
        """The one-statement form of a success, if this broker has one and the step allows it."""
        if self.one_statement is None or state is not Status.SUCCEEDED:
            return None
        if report.attempt is None or report.version is None:
            return None
        plan = self.plans.cached((report.workflow_id, report.version))
        if plan is None:
            return None
        fast = plan.fast_reports.get(report.step_name)
        if fast is None and report.step_name not in plan.nodes and plan.knows(report.step_name):
            return _item_report(item_base(report.step_name))  # a Map item: no lock on its instance
        return fast

    def report(self, worker_id: str, report: StepReport) -> None:
        prepared = self.prepare(worker_id, report)
        if prepared.fast is not None:
            row = self.one_statement.succeed(prepared)  # type: ignore[union-attr]
            if row is not None:
                self._forget(prepared)
                if (
                    prepared.fast.map_item is not None and row[1] <= pg_statements.ITEMS_TAIL
                ):  # (attempt, open)
                    self._complete_maps([prepared])
                return
        self._general_then_forget(prepared)

    def _complete_maps(self, items: Sequence[PreparedReport]) -> None:
        """Map items accepted without their instance's lock: whichever was the last of its map
        completes the map, once its success is committed (see ``pg_statements.item_succeed``)."""
        assert self.rules.shapes is not None
        maps = {(p.report.instance_id, p.fast.map_item) for p in items if p.fast and p.fast.map_item}
        for instance_id, owner in sorted(maps):
            self.rules.shapes.complete_map(self.db, self.events, instance_id, owner)

    def _general_then_forget(self, prepared: PreparedReport) -> None:
        """The general path; afterwards the step's lease is not renewed any more, whether the
        report was accepted or refused. An outage leaves it renewed while the worker retries."""
        try:
            self.general(prepared)
        except (LeaseLost, ReportConflict):
            self._forget(prepared)
            raise
        self._forget(prepared)

    def report_many(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        """One-statement successes share one statement and commit; the rest (failures, joins,
        refusals to explain) take the general path one by one after that commit."""
        prepared = [self.prepare(worker_id, report) for report in reports]
        outcomes: list[BrokerError | None] = [None] * len(prepared)
        fast = [n for n, p in enumerate(prepared) if p.fast is not None]
        general = [n for n, p in enumerate(prepared) if p.fast is None]
        if fast:
            assert self.one_statement is not None
            # Instance order, so two batches lock instances in the same order (no deadlock).
            fast.sort(key=lambda n: str(prepared[n].report.instance_id))
            accepted = self.one_statement.succeed_batch([prepared[n] for n in fast])
            tail = []
            for n, (ok, open_items) in zip(fast, accepted, strict=True):
                if ok:
                    self._forget(prepared[n])
                    if open_items is not None and open_items <= pg_statements.ITEMS_TAIL:
                        tail.append(prepared[n])
                else:
                    general.append(n)
            self._complete_maps(tail)
        for n in sorted(general):
            try:
                self._general_then_forget(prepared[n])
            except (LeaseLost, ReportConflict) as exc:
                outcomes[n] = exc
        return outcomes

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        """On PostgreSQL, a one-statement success and the next claim go back to back."""
        serving = self.workers.keys_of(worker_id)
        self.claimer.timers.complete_due(serving.workflows)
        prepared = self.prepare(worker_id, report)
        if prepared.fast is None or len(serving.keys) != 1 or serving.gated or self.claimer.reaper.due():
            self.report(worker_id, report)
            return _first(self.claimer.claim(worker_id, 1))
        assert self.one_statement is not None
        ticket = self.claimer.floors.ticket()
        floor = self.claimer.floors.for_next_claim(serving.keys)[0]
        accepted, row = self.one_statement.succeed_then_claim(prepared, serving.keys[0], floor)
        if row is not None:
            self.claimer.follow([row], ticket)
        if not accepted:
            # Refused, or a replay of a report accepted earlier: the claim's guard (this step
            # SUCCEEDED at this attempt, reported by this worker) holds for a replay too, so a
            # step may have been claimed all the same. Hand it out (a replay), or give it back.
            claimed = row.assignment() if row is not None else None
            try:
                self._general_then_forget(prepared)  # explains the refusal; an exact replay is fine
            except (BrokerError, DatabaseError):
                if claimed is not None:
                    self.workers.release(worker_id, [claimed])
                raise
            if claimed is None:
                return _first(self.claimer.claim(worker_id, 1))
            self.held.hand(worker_id, [claimed])
            return claimed
        self._forget(prepared)
        if prepared.fast.map_item is not None and accepted[1] <= pg_statements.ITEMS_TAIL:
            self._complete_maps([prepared])  # (attempt, open items): it may have been the last
        if row is None:
            return _first(self.claimer.claim(worker_id, 1))
        claimed = row.assignment()
        self.held.hand(worker_id, [claimed])
        return claimed

    def _forget(self, prepared: PreparedReport) -> None:
        """Reported (accepted or refused): the step's lease is no longer the worker's to renew."""
        report = prepared.report
        self.held.forget(prepared.worker_id, report.instance_id, report.step_name, report.attempt)

    def general(self, prepared: PreparedReport) -> None:
        """The general path: lock the instance, apply the fenced write, then the rules."""
        report, worker_id, state = prepared.report, prepared.worker_id, prepared.state
        history = History()
        with self.db.transaction() as conn:
            locked = conn.execute(self.queries.instance_lock, {"p_instance_id": report.instance_id}).first()
            if locked is None:
                raise UnknownInstance(report.instance_id)
            if report.workflow_id != locked.workflow_id:
                raise UnknownWorkflow(report.workflow_id)
            plan = self.plans.get(conn, (locked.workflow_id, locked.version))
            if not plan.knows(report.step_name):
                raise UnknownStep(report.instance_id, report.step_name)
            if state is Status.SUCCEEDED and (problem := map_problem(plan, report.step_name, report.result)):
                prepared = replace(prepared, state=Status.FAILED, result=None, error=problem, retryable=False)
                state = Status.FAILED
            action = (
                plan.chosen_action(report.step_name, report.result) if state is Status.SUCCEEDED else None
            )
            params = {
                "p_instance_id": report.instance_id,
                "p_name": report.step_name,
                "p_worker_id": worker_id,
                "p_state": state.value,
                "p_result": prepared.result,
                "p_error": prepared.error,
                "p_action": action,
            }
            if prepared.retryable and self._retried(conn, prepared, plan, history):
                history.write(conn, self.events)
                self.db.announce_work(conn)
                return
            if report.attempt is None:
                held = conn.execute(self.queries.step_finish_if_held_any_attempt, params).first()
            else:
                held = conn.execute(
                    self.queries.step_finish_if_held, {**params, "p_attempt": report.attempt}
                ).first()
            if held is None:
                self._check_replay(conn, prepared)
                return
            if state is not Status.SUCCEEDED:  # a success writes no line: its row holds it
                history.add(
                    report.instance_id,
                    EventKind.of_step(state),
                    report.step_name,
                    held.attempt,
                    worker_id,
                    prepared.error,
                    claimed=True,
                )
            self.rules.step_ended(
                conn, report.instance_id, plan, report.step_name, state, prepared.error, history,
                reporter_claims_next=True,
            )  # fmt: skip
            history.write(conn, self.events)

    def _retried(
        self, conn: Connection, prepared: PreparedReport, plan: WorkflowPlan, history: History
    ) -> bool:
        """Schedule the retry a RetryPolicy allows for this failure; False when none is left (or
        the worker does not hold the step: the fenced write below then explains why)."""
        report = prepared.report
        retry = plan.scheduling.of(report.step_name).retry
        if retry is None:
            return False
        where = {"p_instance_id": report.instance_id, "p_name": report.step_name}
        row = conn.execute(self.queries.step_get, where).one()
        if row.retries >= retry.max_retries or report.attempt not in (None, row.attempt):
            return False
        params = {
            **where,
            "p_worker_id": prepared.worker_id,
            "p_attempt": row.attempt,
            "p_delay": retry.delay(row.retries + 1),
            "p_error": prepared.error,
        }
        scheduled = conn.execute(self.queries.step_retry_if_held, params).first()
        if scheduled is None:
            return False
        history.add(
            report.instance_id,
            EventKind.RETRY_SCHEDULED,
            report.step_name,
            scheduled.attempt,
            prepared.worker_id,
            prepared.error,
            claimed=True,
        )
        return True

    def _check_replay(self, conn: Connection, prepared: PreparedReport) -> None:
        """A report the lease guard refused: an exact replay is fine, anything else is not."""
        report, worker_id, state = prepared.report, prepared.worker_id, prepared.state
        row = conn.execute(
            self.queries.step_get, {"p_instance_id": report.instance_id, "p_name": report.step_name}
        ).one()
        current = Status(row.state)
        if row.reported_by == worker_id and report.attempt in (None, row.attempt):
            if state is Status.FAILED and current is Status.QUEUED and row.retries:
                return  # the failure already accepted, and retried: an exact replay
            if current is state and (
                state is not Status.SUCCEEDED or codec.decode(row.result) == report.result
            ):
                return
            raise ReportConflict(
                f"step {report.step_name!r} of instance {report.instance_id!r} already ended {current} "
                "for this attempt; a different report was refused"
            )
        if not self.workers.exists(conn, worker_id):
            raise UnknownWorker(worker_id)
        raise LeaseLost(
            report.instance_id,
            report.step_name,
            why_not_held(current, row.worker_id, row.attempt, worker_id, report),
        )


def _first(assignments: list[StepAssignment]) -> StepAssignment | None:
    return assignments[0] if assignments else None


@cache
def _item_report(owner: str) -> FastReport:
    """The one-statement form of a success of an item of Map ``owner``."""
    return FastReport(map_item=owner)
