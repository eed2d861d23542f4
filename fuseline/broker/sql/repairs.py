"""``SqlBroker``'s repairs: retry from a step, skip a step, set a step's output.

Each is one transaction under the instance lock, planned by
:mod:`fuseline.broker.repairs` from the stored states (a dry run stops
there and writes nothing), then written: the steps reset or ended, the
instance reopened if it had finished, a ``repaired`` event naming the
action, the operator and the steps touched, and the rules run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import UnknownInstance
from ...states import EventKind, Status
from .. import codec
from ..dag import StepView
from ..ids import instance_uuid
from ..repairs import RepairAction, RepairPlan, operator_name, plan_finish, plan_retry_from
from .database import Database
from .history import History, record_instance_success, record_running_claims
from .instances import Instances
from .rows import aware


@dataclass
class Repairs:
    db: Database
    instances: Instances
    max_result_bytes: int

    def repair(
        self,
        instance_id: str,
        action: RepairAction,
        step: str,
        result: Any = None,
        operator: str | None = None,
        *,
        apply: bool,
    ) -> RepairPlan:
        instance_id = instance_uuid(instance_id)
        who = operator_name(operator)
        state = Status.SKIPPED if action is RepairAction.SKIP else Status.SUCCEEDED
        stored = (
            codec.encode_result(step, result, self.max_result_bytes)
            if action is RepairAction.SET_OUTPUT
            else None
        )
        inst, reports, rules = self.instances, self.instances.reports, self.instances.rules
        history = History()
        with self.db.transaction() as conn:
            locked = conn.execute(reports.instance_lock, {"p_instance_id": instance_id}).first()
            if locked is None:
                raise UnknownInstance(instance_id)
            status = Status(locked.status)
            plan = inst.plans.get(conn, (locked.workflow_id, locked.version))
            rows = conn.execute(reports.steps_views, {"p_instance_id": instance_id}).all()
            views = {r.name: StepView(Status(r.state), r.action, aware(r.finished_at)) for r in rows}
            if action is RepairAction.RETRY_FROM:
                repair = plan_retry_from(plan, instance_id, status, views, step, who)
            else:
                chosen = plan.chosen_action(step, result) if state is Status.SUCCEEDED else None
                repair = plan_finish(plan, instance_id, status, views, step, state, chosen, who)
                params = {"p_state": state.value, "p_result": stored, "p_action": chosen}
            if not apply:
                return repair  # a dry run: nothing written (the transaction only read)
            taken = list(repair.reset) if action is RepairAction.RETRY_FROM else [*repair.reset, step]
            record_running_claims(conn, inst.events, instance_id, taken)
            inst.reset_steps(conn, instance_id, plan, repair.reset)
            if status is not Status.RUNNING:
                record_instance_success(conn, inst.events, instance_id)
                conn.execute(inst.queries.instance_reopen, {"p_instance_id": instance_id})
            history.add(instance_id, EventKind.REPAIRED, step, detail=repair.describe())
            if action is RepairAction.RETRY_FROM:
                rules.advance(conn, instance_id, plan, [step], history)
            else:
                where = {"p_instance_id": instance_id, "p_name": step}
                ended = conn.execute(inst.queries.step_end_by_operator, {**where, **params}).one()
                history.add(instance_id, EventKind.of_step(state), step, ended.attempt)
                rules.step_ended(conn, instance_id, plan, step, state, None, history)
            history.write(conn, inst.events)
        return repair
