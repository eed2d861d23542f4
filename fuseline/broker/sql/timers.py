"""Completing Sleep steps, and failing WaitFor steps past their timeout: the broker does it
itself once their time has come.

A Sleep waits QUEUED in a queue no worker serves, available at the end of
its pause. Brokers that claim for a workflow complete its due sleeps first
(at most every ``INTERVAL`` seconds), like the reaper: a running worker is
all it takes, no daemon. Concurrent brokers split the due sleeps (SKIP
LOCKED), and each completion re-checks the step is still QUEUED.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Row

from ...states import EventKind, Status
from ..shapes import signal_timeout
from .database import Database
from .history import History
from .plans import PlanCache
from .queries.events import EventQueries
from .queries.reports import ReportQueries
from .rules import InstanceRules

#: Seconds between two looks for due sleeps by one broker: a Sleep ends at most this late.
INTERVAL = 0.2
#: Seconds between two looks for maps whose items are all done but that are still waiting.
MAPS_INTERVAL = 2.0
#: At most this many sleeps completed per workflow per look.
BATCH = 100


@dataclass
class Timers:
    db: Database
    reports: ReportQueries
    events: EventQueries
    rules: InstanceRules
    plans: PlanCache
    _next: float = field(default=0.0, init=False)
    _next_maps: float = field(default=0.0, init=False)

    def complete_due(self, workflows: Iterable[tuple[str, str]]) -> int:
        """Complete the due sleeps of these (workflow_id, version), when a look is due; how many."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + INTERVAL
        done = 0
        workflows = list(dict.fromkeys(workflows))
        if now >= self._next_maps:
            self._next_maps = now + MAPS_INTERVAL
            done += self._complete_maps(workflows)
        for workflow_id, version in workflows:
            plan = self.plans.cached((workflow_id, version))
            if plan is not None and not plan.scheduling.sleeps:
                continue  # no Sleep in this workflow: no transaction to look for one
            params = {"p_workflow_id": workflow_id, "p_version": version, "p_limit": BATCH}
            with self.db.transaction() as conn:
                due = conn.execute(self.reports.steps_due_timers, params).all()
            done += sum(self._complete(row) for row in due)
        return done

    def _complete_maps(self, workflows: Iterable[tuple[str, str]]) -> int:
        """Maps none of whose items is left: their last item's reporter died between its commit
        and its check. Rare, so looked for only every MAPS_INTERVAL seconds."""
        shapes = self.rules.shapes
        done = 0
        for workflow_id, version in workflows:
            plan = self.plans.cached((workflow_id, version))
            if shapes is None or plan is None or not any(s.map for s in plan.scheduling.steps.values()):
                continue
            params = {"p_workflow_id": workflow_id, "p_version": version, "p_limit": BATCH}
            with self.db.transaction() as conn:
                waiting = conn.execute(shapes.queries.maps_done, params).all()
            done += sum(
                shapes.complete_map(self.db, self.events, str(r.instance_id), r.name) for r in waiting
            )
        return done

    def _complete(self, row: Row) -> bool:
        history = History()
        with self.db.transaction() as conn:
            locked = conn.execute(self.reports.instance_lock, {"p_instance_id": row.instance_id}).first()
            if locked is None:
                return False
            plan = self.plans.get(conn, (locked.workflow_id, locked.version))
            waits = plan.scheduling.steps[row.name].wait_for
            if waits is not None:  # the timeout of a WaitFor: it fails
                assert self.rules.shapes is not None
                error = signal_timeout(waits)
                ended = self.rules.shapes.finish(
                    conn, row.instance_id, plan, row.name, Status.FAILED, None, error, history
                )
                history.write(conn, self.events)
                return ended
            if not conn.execute(self.reports.step_finish_timer, {"p_id": row.id}).first():
                return False  # cancelled, or another broker completed it first
            history.add(row.instance_id, EventKind.SUCCEEDED, row.name)
            self.rules.step_ended(conn, row.instance_id, plan, row.name, Status.SUCCEEDED, None, history)
            history.write(conn, self.events)
        return True
