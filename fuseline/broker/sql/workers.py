"""Workers: registering, heartbeats, liveness, giving steps back, listing."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Connection

from ...errors import UnknownWorker, WorkerExpired
from ...states import EventKind
from ...workflow.schema import WorkflowSchema
from ..base import Lease, StepAssignment, WorkerInfo
from ..dag import WorkflowPlan
from ..ids import instance_uuid, new_id, worker_uuid
from .database import Database
from .history import History
from .leases import HeldLeases
from .plans import PlanCache
from .queries.events import EventQueries
from .queries.leases import LeaseQueries
from .queries.workers import WorkerQueries
from .rows import aware, worker_info

#: Workers whose workflows this broker remembers (a worker loop asks on every claim).
KEYS_CACHE_SIZE = 1024

#: What a claim reads: (workflow_id, version, queue).
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Serving:
    """What a worker claims: its keys, and whether a limit gates a step of its workflows (its
    claims then check the limits one candidate at a time)."""

    keys: tuple[Key, ...]
    gated: bool
    #: (workflow_id, version) of all its workflows, claimable steps or not: the timers of a
    #: workflow whose steps the broker completes (Sleep, WaitFor) run for them too.
    workflows: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keys)


def serving(plans: Sequence[WorkflowPlan], queues: Sequence[str] | None) -> Serving:
    """The keys of a worker that runs these workflows from ``queues`` (None: all their queues)."""
    keys = []
    for plan in plans:
        used = plan.scheduling.queues
        chosen = used if queues is None else used & set(queues)
        keys += [(plan.workflow_id, plan.version, queue) for queue in sorted(chosen)]
    gated = any(plan.scheduling.gated for plan in plans)
    return Serving(tuple(keys), gated, tuple((plan.workflow_id, plan.version) for plan in plans))


@dataclass
class WorkerRegistry:
    """The workers of one database, as this broker sees and serves them.

    A worker is *dead* when it sent no heartbeat for twice the lease (or was
    stopped): by then its leases have lapsed and its steps may run elsewhere,
    so its claims and heartbeats are refused with WorkerExpired until it
    registers again.
    """

    db: Database
    queries: WorkerQueries
    leases: LeaseQueries
    events: EventQueries
    plans: PlanCache
    held: HeldLeases
    lease_seconds: float
    _keys: OrderedDict[str, Serving] = field(default_factory=OrderedDict, init=False)
    _keys_lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # heartbeats: own thread

    @property
    def dead_after(self) -> float:
        """Seconds without a heartbeat or claim after which the worker is dead: two leases."""
        return 2 * self.lease_seconds

    def register(
        self,
        schemas: Sequence[WorkflowSchema],
        host: str | None,
        pid: int | None,
        queues: Sequence[str] | None,
    ) -> str:
        worker_id = new_id()
        with self.db.transaction() as conn:
            plans = self.plans.store(conn, schemas)
            conn.execute(
                self.queries.worker_insert,
                {
                    "id": worker_id,
                    "host": host or socket.gethostname(),
                    "pid": pid if pid is not None else os.getpid(),
                    "workflows": json.dumps([list(s.key) for s in schemas]),
                    "queues": json.dumps(sorted(set(queues))) if queues is not None else None,
                },
            )
        self.plans.remember(plans)
        self._remember_keys(worker_id, serving([plans[s.key] for s in schemas], queues))
        self.held.start(worker_id)
        return worker_id

    def keys_of(self, worker_id: str) -> Serving:
        """What the worker claims: (workflow_id, version, queue) keys, and whether a limit gates any."""
        with self._keys_lock:
            keys = self._keys.get(worker_id)
            if keys is not None:
                self._keys.move_to_end(worker_id)
                return keys
        worker_uuid(worker_id)
        with self.db.transaction() as conn:
            row = conn.execute(self.queries.worker_get, {"p_worker_id": worker_id}).first()
            if row is None:
                raise UnknownWorker(worker_id)
            plans = [self.plans.get(conn, (k[0], k[1])) for k in json.loads(row.workflows)]
        keys = serving(plans, json.loads(row.queues) if row.queues is not None else None)
        self._remember_keys(worker_id, keys)
        return keys

    def _remember_keys(self, worker_id: str, keys: Serving) -> None:
        with self._keys_lock:
            self._keys[worker_id] = keys
            self._keys.move_to_end(worker_id)
            while len(self._keys) > KEYS_CACHE_SIZE:
                self._keys.popitem(last=False)

    def _forget_keys(self, worker_id: str) -> None:
        with self._keys_lock:
            self._keys.pop(worker_id, None)

    def deregister(self, worker_id: str) -> None:
        worker_uuid(worker_id)
        history = History()
        with self.db.transaction() as conn:
            if conn.execute(self.queries.worker_stop, {"p_worker_id": worker_id}).rowcount == 0:
                raise UnknownWorker(worker_id)
            released = conn.execute(self.leases.steps_release_of_worker, {"p_worker_id": worker_id}).all()
            if released:
                self.db.announce_work(conn)
            for r in released:
                history.add(r.instance_id, EventKind.RELEASED, r.name, r.attempt, worker_id, claimed=True)
            history.write(conn, self.events)
        self._forget_keys(worker_id)
        self.held.stop(worker_id)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        """Extend the leases of the steps handed to the worker (all it holds, for a worker
        registered through another broker object) and return them."""
        worker_uuid(worker_id)
        handed = self.held.snapshot(worker_id)
        params = {"p_worker_id": worker_id, "p_lease_seconds": self.lease_seconds}
        with self.db.transaction() as conn:
            # Steps first, then the worker row: the order of a report followed by a claim (the
            # step, then the worker's row as the claim sees it), so this beat and the worker's
            # own report never wait for each other in a cycle. A refusal rolls the leases back.
            if handed is None:
                rows = conn.execute(self.leases.steps_extend_leases, params).all()
            elif handed:
                held = {**params, "p_held": sorted(handed)}
                rows = conn.execute(self.leases.steps_extend_held_leases, held).all()
            else:
                rows = []
            beat = conn.execute(self.queries.worker_heartbeat, {**params, "p_dead_after": self.dead_after})
            if beat.rowcount == 0:
                self._refuse(conn, worker_id)
        if handed is not None:
            self.held.keep_only(worker_id, handed, {(str(r.instance_id), r.name, r.attempt) for r in rows})
        return [Lease(r.instance_id, r.name, r.attempt, aware(r.lease_expires_at)) for r in rows]  # type: ignore[arg-type]

    def check_alive(self, worker_id: str) -> None:
        """Raise UnknownWorker or WorkerExpired unless the worker may claim."""
        with self.db.transaction() as conn:
            alive = conn.execute(
                self.queries.worker_is_alive, {"p_worker_id": worker_id, "p_dead_after": self.dead_after}
            ).first()
            if alive is None:
                self._refuse(conn, worker_id)

    def _refuse(self, conn: Connection, worker_id: str) -> None:
        """Why a worker may not claim or beat: it is unknown, stopped, or silent too long."""
        row = conn.execute(self.queries.worker_get, {"p_worker_id": worker_id}).first()
        if row is None:
            raise UnknownWorker(worker_id)
        self._forget_keys(worker_id)
        if row.stopped_at is not None:
            raise WorkerExpired(worker_id, "it was stopped")
        silent = (aware(row.db_now) - aware(row.last_heartbeat)).total_seconds()  # type: ignore[operator]
        raise WorkerExpired(
            worker_id, f"no heartbeat for {silent:.1f} s, more than twice its {self.lease_seconds:g} s lease"
        )

    def exists(self, conn: Connection, worker_id: str) -> bool:
        if worker_id in self._keys:
            return True
        return conn.execute(self.queries.worker_get, {"p_worker_id": worker_id}).first() is not None

    def release(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        """Queue again steps the worker claimed but will not run; each attempt is refunded."""
        worker_uuid(worker_id)
        if not assignments:
            return
        history = History()
        with self.db.transaction() as conn:
            released = []
            # Instance order, as every transaction that touches several instances takes them.
            for assignment in sorted(assignments, key=lambda a: (str(a.instance_id), a.step_name)):
                released += conn.execute(
                    self.leases.step_release,
                    {
                        "p_worker_id": worker_id,
                        "p_instance_id": instance_uuid(assignment.instance_id),
                        "p_name": assignment.step_name,
                        "p_attempt": assignment.attempt,
                    },
                ).all()
            if released:
                self.db.announce_work(conn)
            for r in released:
                history.add(r.instance_id, EventKind.RELEASED, r.name, r.attempt, worker_id, claimed=True)
            history.write(conn, self.events)
        for assignment in assignments:
            self.held.forget(worker_id, assignment.instance_id, assignment.step_name, assignment.attempt)

    def list(self) -> list[WorkerInfo]:
        with self.db.transaction() as conn:
            rows = conn.execute(self.queries.workers_list).all()
            running = conn.execute(self.queries.steps_running).all() if rows else []
        held: dict[str, list[str]] = {}
        for r in running:
            held.setdefault(str(r.worker_id), []).append(f"{r.instance_id}/{r.name}")
        dead_after = timedelta(seconds=self.dead_after)
        return [worker_info(r, held.get(str(r.id), []), dead_after) for r in rows]
