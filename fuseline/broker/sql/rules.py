"""Applying the DAG rules (:mod:`fuseline.broker.dag`) to an instance's stored steps.

Callers hold the instance lock (``instance_lock``), so no other transaction
evaluates the same instance at the same time: a successor is queued exactly
once and an instance is finalized exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from ...states import EventKind, Status
from ..dag import Progress, StepView, WorkflowPlan
from .history import History
from .queries.claims import ClaimQueries
from .queries.reports import ReportQueries
from .rows import aware

if TYPE_CHECKING:
    from .shapes import ShapeRules


@dataclass
class InstanceRules:
    """Moves an instance forward after one of its steps changed."""

    reports: ReportQueries
    claims: ClaimQueries
    #: Wakes idle workers when the transaction commits (the database's NOTIFY, if it has one).
    announce_work: Callable[[Connection], None]
    #: Map, SubWorkflow and WaitFor steps (wired after construction).
    shapes: ShapeRules | None = None

    def step_ended(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        name: str,
        state: Status,
        error: str | None,
        history: History,
        *,
        reporter_claims_next: bool = False,
    ) -> None:
        """A step reached a final state: a Map item tells its map, any other step its successors."""
        if name not in plan.nodes:
            assert self.shapes is not None
            self.shapes.item_ended(conn, instance_id, plan, name, state, error, history)
            return
        self.advance(
            conn, instance_id, plan, plan.successors(name), history, reporter_claims_next=reporter_claims_next
        )

    def advance(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        candidates: Iterable[str],
        history: History,
        *,
        reporter_claims_next: bool = False,
    ) -> None:
        """Decide the PENDING ``candidates`` (and what that unlocks), then finalize if done.

        ``reporter_claims_next`` says a worker will claim again right after this
        (it takes one queued step itself, so others are woken only for a fan-out).
        """
        rows = conn.execute(self.reports.steps_views, {"p_instance_id": instance_id}).all()
        views = {r.name: StepView(Status(r.state), r.action, aware(r.finished_at)) for r in rows}
        progress = plan.settle(views, candidates)
        self._apply(conn, instance_id, plan, progress, history, reporter_claims_next=reporter_claims_next)
        outcome = plan.outcome(views)
        if outcome is not None:
            self.finalize(conn, instance_id, plan, outcome, history)

    def _apply(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        progress: Progress,
        history: History,
        *,
        reporter_claims_next: bool,
    ) -> None:
        if progress.queued:
            conn.execute(
                self.reports.step_queue_if_pending,
                [
                    {
                        "p_instance_id": instance_id,
                        "p_name": name,
                        "p_inputs_from": json.dumps(inputs_from) if inputs_from else None,
                        # A Sleep's clock (a WaitFor's timeout) starts now.
                        "p_delay": plan.scheduling.steps[name].delay,
                    }
                    for name, inputs_from in progress.queued.items()
                ],
            )
            for name in progress.queued:
                history.add(instance_id, EventKind.QUEUED, name)
            if len(progress.queued) > 1 or not reporter_claims_next:
                self.announce_work(conn)
            if self.shapes is not None and plan.scheduling.shaped:
                self.shapes.start(conn, instance_id, plan, progress.queued, history)
        for names, state in ((progress.skipped, Status.SKIPPED), (progress.cancelled, Status.CANCELLED)):
            if names:
                conn.execute(
                    self.reports.steps_close_if_pending,
                    {"p_instance_id": instance_id, "p_names": names, "p_state": state.value},
                )
                for name in names:
                    history.add(instance_id, EventKind.of_step(state), name)

    def finalize(
        self, conn: Connection, instance_id: str, plan: WorkflowPlan, outcome: Status, history: History
    ) -> None:
        """End a RUNNING instance once: SUCCEEDED with its outputs' results, else FAILED naming
        the first step that failed."""
        result = error = None
        if outcome is Status.SUCCEEDED:
            found = conn.execute(
                self.claims.step_results, {"p_instance_id": instance_id, "p_names": list(plan.outputs)}
            ).all()
            texts = {r.name: r.result for r in found}
            parts = [texts.get(name) or "null" for name in plan.outputs]
            result = parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]"
        else:
            failure = conn.execute(self.reports.step_first_failure, {"p_instance_id": instance_id}).first()
            if failure is not None:
                error = f"step {failure.name!r} failed: {failure.error}"
        finished = conn.execute(
            self.reports.instance_finish,
            {"p_instance_id": instance_id, "p_status": outcome.value, "p_result": result, "p_error": error},
        )
        if finished.rowcount == 1:
            if outcome is not Status.SUCCEEDED:  # a success is told by the row (:mod:`.timeline`)
                history.add(instance_id, EventKind.of_instance(outcome), detail=error)
            if self.shapes is not None:
                self.shapes.instance_ended(conn, instance_id, outcome, history)
