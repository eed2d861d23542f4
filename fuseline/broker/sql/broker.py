"""``SqlBroker``: the broker contract on PostgreSQL or SQLite.

Every operation is one short transaction. The rules that move an instance
forward are those of :mod:`fuseline.broker.dag`, evaluated while holding the
instance's row lock; lease-dependent writes are guarded in SQL. Lock order
is always instance, then steps, so reports, cancels, retries and the
reaper never deadlock; claims lock only QUEUED rows and skip locked ones.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from ...errors import (
    BrokerError,
    InvalidTransition,
    LeaseLost,
    ReportConflict,
    ResultNotSerializable,
    ResultTooLarge,
    SchemaConflict,
    UnknownInstance,
    UnknownStep,
    UnknownWorker,
    UnknownWorkflow,
)
from ...states import Status
from ...workflow.schema import WorkflowSchema
from .. import codec
from ..base import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_RESULT_BYTES,
    Broker,
    InstanceEvent,
    InstanceInfo,
    Lease,
    StepAssignment,
    StepInfo,
    StepReport,
    WorkerInfo,
)
from ..dag import Progress, StepView, WorkflowPlan
from ..ids import new_id, parse_id
from ..reports import NO_ERROR_TEXT, WORKER_LOST, reported_state, why_not_held
from . import migrate as schema_migrations
from .claimfloor import ClaimFloors
from .engine import (
    IDLE_IN_TRANSACTION_SECONDS,
    create_claim_engine,
    create_database_engine,
    database_error,
    mask_url,
    scrub,
)
from .hotpath import ClaimRow, PostgresHotPath
from .listener import WorkListener
from .models import instances, steps
from .queries import Queries, queries_for

#: At most this many expired leases are handled per reaper pass.
REAP_BATCH = 100
#: How often an idle worker on SQLite looks for work.
SQLITE_POLL_SECONDS = 0.1
#: What a claim returns: one assignment (or None), or a batch of claimed rows.
_Claimed = TypeVar("_Claimed")

_Event = dict[str, Any]


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive UTC datetimes; make every timestamp timezone-aware."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _worker_uuid(worker_id: str) -> str:
    """Worker ids are UUIDs; anything else is unknown (and must not reach SQL as a bad cast)."""
    parsed = parse_id(worker_id)
    if parsed is None:
        raise UnknownWorker(worker_id)
    return parsed


def _instance_uuid(instance_id: str) -> str:
    parsed = parse_id(instance_id)
    if parsed is None:
        raise UnknownInstance(instance_id)
    return parsed


def _event(
    instance_id: str,
    kind: str,
    step_name: str | None = None,
    attempt: int | None = None,
    worker_id: str | None = None,
    detail: str | None = None,
) -> _Event:
    return {
        "instance_id": instance_id,
        "kind": kind,
        "step_name": step_name,
        "attempt": attempt,
        "worker_id": worker_id,
        "detail": detail,
    }


class SqlBroker(Broker):
    """The broker on a SQL database shared by any number of worker processes.

    ``url_or_engine`` is a database URL (``postgresql+psycopg://...`` or
    ``sqlite:///file.db``) or an SQLAlchemy Engine. The database must be
    migrated (``fuseline db upgrade``); ``migrate=True`` upgrades it instead,
    which the embedded SQLite default does. ``listen=False`` turns off
    LISTEN/NOTIFY wake-ups (behind PgBouncer in transaction mode), leaving
    idle workers to poll.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        migrate: bool = False,
        listen: bool = True,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.lease_seconds = float(lease_seconds)
        self.max_result_bytes = max_result_bytes
        # A transaction idle this long lost its worker: let the server end it (see engine.py).
        idle_seconds = max(1.0, min(self.lease_seconds / 2, IDLE_IN_TRANSACTION_SECONDS))
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
            if self.engine.dialect.name == "sqlite":
                from .engine import configure_sqlite

                configure_sqlite(self.engine)
        else:
            self.engine = create_database_engine(url_or_engine, idle_in_transaction_seconds=idle_seconds)
            self._owns_engine = True
        self.url = mask_url(self.engine.url)
        self.q: Queries = queries_for(self.engine.dialect.name)
        is_postgresql = self.engine.dialect.name == "postgresql"
        #: One-statement claims, reports and dispatches (PostgreSQL); SQLite runs the general path.
        self._claims_engine = (
            create_claim_engine(
                self.engine, owned=self._owns_engine, idle_in_transaction_seconds=idle_seconds
            )
            if is_postgresql
            else None
        )
        self._hot = (
            PostgresHotPath(self.engine, self._claims_engine, self._scrub)
            if self._claims_engine is not None
            else None
        )
        self._listener = WorkListener(self.engine) if is_postgresql and listen else None
        self._plans: dict[tuple[str, str], WorkflowPlan] = {}
        self._worker_keys: dict[str, list[tuple[str, str]]] = {}
        #: Per worker registered here, the steps handed to it and not reported yet
        #: (instance, step, attempt): the only leases its heartbeats extend.
        self._handed: dict[str, set[tuple[str, str, int]]] = {}
        self._handed_lock = threading.Lock()
        self._reap_interval = max(0.05, min(self.lease_seconds / 4, 5.0))
        self._next_reap = 0.0
        self._floors = ClaimFloors()
        try:
            if migrate:
                schema_migrations.ensure_current(self.engine)
            else:
                schema_migrations.check_current(self.engine)
        except DBAPIError as exc:
            self.close()
            raise database_error(
                exc.orig,
                f"cannot use the database {self.url}",
                self.engine.url,
                connection_invalidated=exc.connection_invalidated,
            ) from None
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SqlBroker({self.url!r}, lease_seconds={self.lease_seconds:g})"

    def close(self) -> None:
        if getattr(self, "_listener", None) is not None:
            self._listener.close()
        if getattr(self, "_hot", None) is not None:
            self._hot.close()
        claims = getattr(self, "_claims_engine", None)
        if claims is not None and claims.pool is not self.engine.pool:
            claims.dispose()
        if self._owns_engine:
            self.engine.dispose()

    def _scrub(self, error: object) -> str:
        return scrub(str(error), self.engine.url)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction; database errors leave as DatabaseError with no password in them."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except DBAPIError as exc:
            raise database_error(
                exc.orig,
                f"database error on {self.url}",
                self.engine.url,
                connection_invalidated=exc.connection_invalidated,
            ) from None

    # -- definitions ---------------------------------------------------------------------
    def _store_schemas(
        self, conn: Connection, schemas: Iterable[WorkflowSchema]
    ) -> dict[tuple[str, str], WorkflowPlan]:
        """Insert new definitions, refusing changed ones; returns the plans of all of them.

        The caller caches the plans only after its transaction commits, so a
        rolled-back registration leaves no trace in this process either.
        """
        plans: dict[tuple[str, str], WorkflowPlan] = {}
        for schema in schemas:
            known = self._plans.get(schema.key)
            if known is not None:
                if known.hash != schema.hash:
                    raise SchemaConflict(schema.workflow_id, schema.version)
                plans[schema.key] = known
                continue
            conn.execute(
                self.q.workflow_insert,
                {
                    "workflow_id": schema.workflow_id,
                    "version": schema.version,
                    "schema_hash": schema.hash,
                    "definition": schema.to_json(),
                },
            )
            stored = conn.execute(
                self.q.workflow_get, {"p_workflow_id": schema.workflow_id, "p_version": schema.version}
            ).one()
            if stored.schema_hash != schema.hash:
                raise SchemaConflict(schema.workflow_id, schema.version)
            plans[schema.key] = WorkflowPlan(schema)
        return plans

    def _plan(self, conn: Connection, key: tuple[str, str]) -> WorkflowPlan:
        plan = self._plans.get(key)
        if plan is None:
            row = conn.execute(self.q.workflow_get, {"p_workflow_id": key[0], "p_version": key[1]}).first()
            if row is None:
                raise UnknownWorkflow(*key)
            plan = WorkflowPlan(WorkflowSchema.from_json(row.definition))
            self._plans[key] = plan
        return plan

    # -- workers ---------------------------------------------------------------------------
    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        with self._transaction() as conn:
            plans = self._store_schemas(conn, schemas)
        self._plans.update(plans)

    def register_worker(
        self,
        schemas: Sequence[WorkflowSchema],
        *,
        host: str | None = None,
        pid: int | None = None,
    ) -> str:
        worker_id = new_id()
        keys = [s.key for s in schemas]
        with self._transaction() as conn:
            plans = self._store_schemas(conn, schemas)
            conn.execute(
                self.q.worker_insert,
                {
                    "id": worker_id,
                    "host": host or socket.gethostname(),
                    "pid": pid if pid is not None else os.getpid(),
                    "workflows": json.dumps([list(k) for k in keys]),
                },
            )
        self._plans.update(plans)
        self._worker_keys[worker_id] = keys
        with self._handed_lock:
            self._handed[worker_id] = set()
        return worker_id

    def _keys_of(self, worker_id: str) -> list[tuple[str, str]]:
        keys = self._worker_keys.get(worker_id)
        if keys is None:
            _worker_uuid(worker_id)
            with self._transaction() as conn:
                stored = conn.execute(self.q.worker_get, {"p_worker_id": worker_id}).scalar()
            if stored is None:
                raise UnknownWorker(worker_id)
            keys = [(k[0], k[1]) for k in json.loads(stored)]
            self._worker_keys[worker_id] = keys
        return keys

    def deregister_worker(self, worker_id: str) -> None:
        _worker_uuid(worker_id)
        with self._transaction() as conn:
            if conn.execute(self.q.worker_stop, {"p_worker_id": worker_id}).rowcount == 0:
                raise UnknownWorker(worker_id)
            released = conn.execute(self.q.steps_release_of_worker, {"p_worker_id": worker_id}).all()
            if released:
                self._announce_work(conn)
            self._append(
                conn,
                [_event(r.instance_id, "released", r.name, r.attempt, worker_id) for r in released],
            )
        self._worker_keys.pop(worker_id, None)
        with self._handed_lock:
            self._handed.pop(worker_id, None)

    def keep_alive(self, worker_id: str) -> list[Lease]:
        """Extend the leases of the steps handed to the worker (all it holds, for a worker
        registered through another broker object) and return them."""
        _worker_uuid(worker_id)
        with self._handed_lock:
            handed = set(self._handed[worker_id]) if worker_id in self._handed else None
        params = {"p_worker_id": worker_id, "p_lease_seconds": self.lease_seconds}
        with self._transaction() as conn:
            if conn.execute(self.q.worker_heartbeat, {"p_worker_id": worker_id}).rowcount == 0:
                raise UnknownWorker(worker_id)
            if handed is None:
                rows = conn.execute(self.q.steps_extend_leases, params).all()
            elif handed:
                held = {**params, "p_held": sorted(handed)}
                rows = conn.execute(self.q.steps_extend_held_leases, held).all()
            else:
                rows = []
        if handed is not None:
            kept = {(str(r.instance_id), r.name, r.attempt) for r in rows}
            with self._handed_lock:  # those no longer held (taken over, finished) are forgotten
                self._handed.get(worker_id, set()).difference_update(handed - kept)
        return [Lease(r.instance_id, r.name, r.attempt, _aware(r.lease_expires_at)) for r in rows]  # type: ignore[arg-type]

    def _hand(self, worker_id: str, assignment: StepAssignment | None) -> StepAssignment | None:
        """Remember a step handed to a worker registered here (its heartbeats renew it)."""
        if assignment is not None:
            with self._handed_lock:
                held = self._handed.get(worker_id)
                if held is not None:
                    held.add((str(assignment.instance_id), assignment.step_name, assignment.attempt))
        return assignment

    def _forget(self, worker_id: str, instance_id: str, step_name: str, attempt: int | None) -> None:
        """A step the worker reported or gave back (accepted or refused) is no longer its to renew."""
        with self._handed_lock:
            held = self._handed.get(worker_id)
            if held:
                instance_id = str(instance_id)
                held.difference_update(
                    [key for key in held if key[:2] == (instance_id, step_name) and attempt in (None, key[2])]
                )

    def _forget_report(self, worker_id: str, report: StepReport) -> None:
        self._forget(worker_id, report.instance_id, report.step_name, report.attempt)

    def wait_for_work(self, timeout: float) -> bool:
        """PostgreSQL: wait for a NOTIFY from a transaction that queued work; SQLite: a short poll."""
        if self._listener is not None:
            return self._listener.wait(timeout)
        if self.engine.dialect.name == "sqlite":
            # A claim on a local file is cheap: poll often instead of waiting out the interval.
            time.sleep(min(timeout, SQLITE_POLL_SECONDS))
            return True
        return super().wait_for_work(timeout)

    def _announce_work(self, conn: Connection) -> None:
        """Wake idle workers when this transaction commits (PostgreSQL)."""
        if self.q.work_announce is not None:
            conn.execute(self.q.work_announce)

    # -- claiming ----------------------------------------------------------------------------
    def get_step(self, worker_id: str) -> StepAssignment | None:
        keys = self._keys_of(worker_id)
        return self._hand(worker_id, self._reaping(lambda: self._claim(worker_id, keys)))

    def _reaping(self, claim: Callable[[], _Claimed]) -> _Claimed:
        """Run ``claim``, reaping expired leases first when a reaper pass is due, or when the
        claim found nothing (then claiming again if the reaper put steps back)."""
        reaped = False
        if time.monotonic() >= self._next_reap:
            self._reap_expired()
            reaped = True
        claimed = claim()
        if not claimed and not reaped and self._reap_expired():
            claimed = claim()
        return claimed

    def get_steps(self, worker_id: str, limit: int) -> list[StepAssignment]:
        """On PostgreSQL, the whole batch in one statement; elsewhere one claim at a time."""
        if self._hot is None or limit <= 1:
            return super().get_steps(worker_id, limit)
        keys = self._keys_of(worker_id)
        if not keys:
            return []
        hot = self._hot

        def claim(floors: list[datetime | None]) -> list[ClaimRow]:
            return hot.claim_batch(worker_id, keys, floors, self.lease_seconds, limit)

        rows = self._reaping(lambda: self._claim_from_floors(keys, claim))
        return [self._hand(worker_id, self._assignment(row)) for row in rows]  # type: ignore[misc]

    def _claim_from_floors(
        self, keys: list[tuple[str, str]], claim: Callable[[list[datetime | None]], list[ClaimRow]]
    ) -> list[ClaimRow]:
        """Claim above the floors of :class:`.claimfloor.ClaimFloors`, and from the start when
        that finds nothing and no full scan ran for a second. The floors follow the claim."""
        floors = self._floors.floors(keys)
        rows = claim(floors)
        if not rows and any(floor is not None for floor in floors) and self._floors.rescan_when_empty():
            rows = claim([None] * len(keys))
        self._floors.follow([(row[1], row[2], row[9]) for row in rows])
        return rows

    def _claim(self, worker_id: str, keys: list[tuple[str, str]]) -> StepAssignment | None:
        if not keys:
            return None
        if self._hot is not None:
            return self._claim_in_one_statement(worker_id, keys)
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_lease_seconds": self.lease_seconds}
        if len(keys) == 1:
            statement = self.q.step_claim_one_workflow
            params.update(p_workflow_id=keys[0][0], p_version=keys[0][1])
        else:
            statement = self.q.step_claim_many_workflows
            params["p_keys"] = keys
        with self._transaction() as conn:
            row = conn.execute(statement, params).first()
            if row is None:
                return None
            inputs = conn.execute(self.q.instance_inputs, {"p_instance_id": row.instance_id}).scalar_one()
            names = json.loads(row.inputs_from) if row.inputs_from else []
            results: dict[str, Any] = {}
            if names:
                found = conn.execute(
                    self.q.step_results, {"p_instance_id": row.instance_id, "p_names": names}
                ).all()
                results = {r.name: codec.decode(r.result) for r in found}
            self._append(conn, [_event(row.instance_id, "claimed", row.name, row.attempt, worker_id)])
        return StepAssignment(
            workflow_id=row.workflow_id,
            instance_id=row.instance_id,
            step_name=row.name,
            payload={"workflow_inputs": codec.decode(inputs), "results": results},
            assigned_at=_aware(row.started_at),  # type: ignore[arg-type]
            expires_at=_aware(row.lease_expires_at),  # type: ignore[arg-type]
            attempt=row.attempt,
            version=row.version,
        )

    def _claim_in_one_statement(self, worker_id: str, keys: list[tuple[str, str]]) -> StepAssignment | None:
        hot = self._hot
        assert hot is not None

        def claim(floors: list[datetime | None]) -> list[ClaimRow]:
            row = hot.claim(worker_id, keys, floors, self.lease_seconds)
            return [row] if row is not None else []

        rows = self._claim_from_floors(keys, claim)
        return self._assignment(rows[0]) if rows else None

    @staticmethod
    def _assignment(row: tuple[Any, ...]) -> StepAssignment:
        """A claim row of the hot path as a StepAssignment."""
        instance_id, workflow_id, version, name, attempt, started, expires, inputs, results, _ = row
        return StepAssignment(
            workflow_id=workflow_id,
            instance_id=instance_id,
            step_name=name,
            payload={
                "workflow_inputs": codec.decode(inputs),
                "results": codec.decode(results) if results else {},
            },
            assigned_at=started,
            expires_at=expires,
            attempt=attempt,
            version=version,
        )

    def _reap_expired(self) -> int:
        """Queue again the steps whose lease expired; fail those on their last attempt.

        Returns how many expired steps it handled.

        Any broker process does this while claiming, so no separate daemon
        is needed. Concurrent reapers split the rows (SKIP LOCKED), and
        every write re-checks that the step is still RUNNING and expired, so
        a report that commits first always wins.
        """
        self._next_reap = time.monotonic() + self._reap_interval
        with self._transaction() as conn:
            expired = conn.execute(self.q.steps_expired_requeueable, {"p_limit": REAP_BATCH}).all()
            if expired:
                conn.execute(self.q.steps_requeue_expired, {"p_ids": [r.id for r in expired]})
                self._floors.lower([(r.workflow_id, r.version, _aware(r.available_at)) for r in expired])
                self._announce_work(conn)
                self._append(
                    conn,
                    [_event(r.instance_id, "lease_expired", r.name, r.attempt, r.worker_id) for r in expired],
                )
            final = conn.execute(self.q.steps_expired_final, {"p_limit": REAP_BATCH}).all()
        for row in final:
            self._fail_lost_step(row)
        return len(expired) + len(final)

    def _fail_lost_step(self, row: Row[Any]) -> None:
        with self._transaction() as conn:
            locked = conn.execute(self.q.instance_lock, {"p_instance_id": row.instance_id}).first()
            if locked is None:
                return
            failed = conn.execute(
                self.q.step_fail_if_expired,
                {"p_id": row.id, "p_attempt": row.attempt, "p_error": WORKER_LOST},
            ).first()
            if failed is None:
                return  # a report or another reaper got there first
            events = [
                _event(row.instance_id, "lease_expired", row.name, row.attempt, row.worker_id),
                _event(row.instance_id, "failed", row.name, row.attempt, row.worker_id, WORKER_LOST),
            ]
            plan = self._plan(conn, (locked.workflow_id, locked.version))
            self._advance(conn, row.instance_id, plan, plan.successors(row.name), events)
            self._append(conn, events)

    # -- reporting ---------------------------------------------------------------------------
    def report_step(self, worker_id: str, report: StepReport) -> None:
        self._report_and_forget(worker_id, report, fast_path=True)

    def _report_and_forget(self, worker_id: str, report: StepReport, *, fast_path: bool) -> None:
        """Report, then stop renewing the step's lease whatever the answer.

        ``fast_path=False`` goes straight to the general path (a batch already
        tried the one-statement path for this report).
        """
        try:
            self._report_step(worker_id, report, fast_path)
        except (LeaseLost, ReportConflict):
            self._forget_report(worker_id, report)
            raise
        self._forget_report(worker_id, report)

    def _report_step(self, worker_id: str, report: StepReport, fast_path: bool) -> None:
        state = reported_state(report)
        _worker_uuid(worker_id)
        _instance_uuid(report.instance_id)
        if fast_path and state is Status.SUCCEEDED and self._report_in_one_statement(worker_id, report):
            return
        with self._transaction() as conn:
            locked = conn.execute(self.q.instance_lock, {"p_instance_id": report.instance_id}).first()
            if locked is None:
                raise UnknownInstance(report.instance_id)
            if report.workflow_id != locked.workflow_id:
                raise UnknownWorkflow(report.workflow_id)
            plan = self._plan(conn, (locked.workflow_id, locked.version))
            if report.step_name not in plan.nodes:
                raise UnknownStep(report.instance_id, report.step_name)
            result, error, action = None, report.error, None
            if state is Status.SUCCEEDED:
                try:
                    result = codec.encode_result(report.step_name, report.result, self.max_result_bytes)
                except (ResultNotSerializable, ResultTooLarge) as exc:
                    state, error = Status.FAILED, str(exc)
                else:
                    action = plan.chosen_action(report.step_name, report.result)
            elif state is Status.FAILED and not error:
                error = NO_ERROR_TEXT
            params = {
                "p_instance_id": report.instance_id,
                "p_name": report.step_name,
                "p_worker_id": worker_id,
                "p_state": state.value,
                "p_result": result,
                "p_error": error,
                "p_action": action,
            }
            if report.attempt is None:
                held = conn.execute(self.q.step_finish_if_held_any_attempt, params).first()
            else:
                held = conn.execute(
                    self.q.step_finish_if_held, {**params, "p_attempt": report.attempt}
                ).first()
            if held is None:
                self._check_replay(conn, worker_id, report, state)
                return
            events = [
                _event(
                    report.instance_id, state.value.lower(), report.step_name, held.attempt, worker_id, error
                )
            ]
            self._advance(
                conn,
                report.instance_id,
                plan,
                plan.successors(report.step_name),
                events,
                reporter_claims_next=True,
            )
            self._append(conn, events)

    def report_steps(self, worker_id: str, reports: Sequence[StepReport]) -> list[BrokerError | None]:
        """On PostgreSQL, the one-statement successes share one transaction (one WAL flush).

        The rest (failures, joins, refusals to explain) take the general path
        one by one, after that commit, without trying the one-statement path again.
        """
        if self._hot is None:
            return super().report_steps(worker_id, reports)
        outcomes: list[BrokerError | None] = [None] * len(reports)
        fast: list[tuple[int, tuple[dict[str, Any], bool]]] = []
        general: list[int] = []
        for index, report in enumerate(reports):
            prepared = self._fast_report(worker_id, report)
            if prepared is None:
                general.append(index)
            else:
                fast.append((index, prepared))
        if fast:
            # Instance order, so two batches lock instances in the same order (no deadlock).
            fast.sort(key=lambda item: str(item[1][0]["p_instance_id"]))
            accepted = self._hot.succeed_batch([prepared for _, prepared in fast])
            for (index, _), ok in zip(fast, accepted, strict=True):
                if ok:
                    self._forget_report(worker_id, reports[index])
                else:
                    general.append(index)
        for index in sorted(general):
            try:
                self._report_and_forget(worker_id, reports[index], fast_path=False)
            except (LeaseLost, ReportConflict) as exc:
                outcomes[index] = exc
        return outcomes

    def report_and_claim(self, worker_id: str, report: StepReport) -> StepAssignment | None:
        """On PostgreSQL, a fast-path success and the next claim share one round trip."""
        keys = self._keys_of(worker_id)
        prepared = self._fast_report(worker_id, report) if len(keys) == 1 else None
        if prepared is None or time.monotonic() >= self._next_reap:
            return super().report_and_claim(worker_id, report)
        assert self._hot is not None
        params, finishes = prepared
        accepted, row = self._hot.succeed_and_claim(
            params,
            finishes=finishes,
            workflow=keys[0],
            floor=self._floors.floors(keys)[0],
            lease_seconds=self.lease_seconds,
        )
        if row is not None:
            self._floors.follow([(row[1], row[2], row[9])])
        if not accepted:
            # Refused, or a replay of a report accepted earlier: the claim's guard (this step
            # SUCCEEDED at this attempt, reported by this worker) holds for a replay too, so a
            # step may have been claimed all the same. Hand it out (a replay), or give it back.
            claimed = self._assignment(row) if row is not None else None
            try:
                self.report_step(worker_id, report)  # explains the refusal; an exact replay is fine
            except BrokerError:
                if claimed is not None:
                    self.release_steps(worker_id, [claimed])
                raise
            return self._hand(worker_id, claimed) if claimed is not None else self.get_step(worker_id)
        self._forget_report(worker_id, report)
        if row is None:
            return self.get_step(worker_id)
        return self._hand(worker_id, self._assignment(row))

    def release_steps(self, worker_id: str, assignments: Sequence[StepAssignment]) -> None:
        _worker_uuid(worker_id)
        if not assignments:
            return
        released = []
        with self._transaction() as conn:
            # Instance order, as every transaction that touches several instances takes them.
            for assignment in sorted(assignments, key=lambda a: (str(a.instance_id), a.step_name)):
                release = self.q.steps_release_of_worker.where(
                    steps.c.instance_id == _instance_uuid(assignment.instance_id),
                    steps.c.name == assignment.step_name,
                    steps.c.attempt == assignment.attempt,
                )
                released += conn.execute(release, {"p_worker_id": worker_id}).all()
            if released:
                self._announce_work(conn)
            self._append(
                conn, [_event(r.instance_id, "released", r.name, r.attempt, worker_id) for r in released]
            )
        for assignment in assignments:
            self._forget(worker_id, assignment.instance_id, assignment.step_name, assignment.attempt)

    def _fast_report(self, worker_id: str, report: StepReport) -> tuple[dict[str, Any], bool] | None:
        """Parameters of a one-statement success report, and whether it finishes the instance.

        None when the fast path does not apply: not PostgreSQL, a report
        without attempt or version, a step whose success depends on other
        steps' states (see ``FastReport``), or a result the general path must
        turn into a failure.
        """
        if self._hot is None or report.attempt is None or report.version is None:
            return None
        if reported_state(report) is not Status.SUCCEEDED:
            return None
        plan = self._plans.get((report.workflow_id, report.version))
        fast = plan.fast_reports.get(report.step_name) if plan is not None else None
        if fast is None:
            return None
        _worker_uuid(worker_id)
        _instance_uuid(report.instance_id)
        try:
            result = codec.encode_result(report.step_name, report.result, self.max_result_bytes)
        except (ResultNotSerializable, ResultTooLarge):
            return None
        params: dict[str, Any] = {
            "p_instance_id": report.instance_id,
            "p_workflow_id": report.workflow_id,
            "p_version": report.version,
            "p_name": report.step_name,
            "p_worker_id": worker_id,
            "p_attempt": report.attempt,
            "p_result": result,
        }
        if not fast.finalizes:
            params.update(
                p_queue=list(fast.queue),
                p_consumers=list(fast.consumers),
                p_inputs_from=json.dumps([report.step_name]),
            )
        return params, fast.finalizes

    def _report_in_one_statement(self, worker_id: str, report: StepReport) -> bool:
        """Record a success in one statement when no other step's state matters.

        Returns False when the fast path does not apply or the statement
        changed nothing; the general path then decides (and explains a refusal).
        """
        prepared = self._fast_report(worker_id, report)
        if prepared is None:
            return False
        assert self._hot is not None
        params, finishes = prepared
        return self._hot.succeed(params, finishes=finishes)

    def _check_replay(self, conn: Connection, worker_id: str, report: StepReport, state: Status) -> None:
        """A report the lease guard refused: an exact replay is fine, anything else is not."""
        row = conn.execute(
            self.q.step_get, {"p_instance_id": report.instance_id, "p_name": report.step_name}
        ).one()
        current = Status(row.state)
        if row.reported_by == worker_id and report.attempt in (None, row.attempt):
            if current is state and (
                state is not Status.SUCCEEDED or codec.decode(row.result) == report.result
            ):
                return
            raise ReportConflict(
                f"step {report.step_name!r} of instance {report.instance_id!r} already ended {current} "
                "for this attempt; a different report was refused"
            )
        if (
            worker_id not in self._worker_keys
            and conn.execute(self.q.worker_get, {"p_worker_id": worker_id}).first() is None
        ):
            raise UnknownWorker(worker_id)
        raise LeaseLost(
            report.instance_id,
            report.step_name,
            why_not_held(current, row.worker_id, row.attempt, worker_id, report),
        )

    def _advance(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        candidates: Iterable[str],
        events: list[_Event],
        *,
        reporter_claims_next: bool = False,
    ) -> None:
        """Apply the join rules after a change, then finalize the instance if it is done.

        The caller holds the instance lock, so no other transaction evaluates
        this instance at the same time. ``reporter_claims_next`` says a
        worker will claim again right after this (it takes one queued step
        itself, so others are woken only for a fan-out).
        """
        rows = conn.execute(self.q.steps_views, {"p_instance_id": instance_id}).all()
        views = {r.name: StepView(Status(r.state), r.action, _aware(r.finished_at)) for r in rows}
        progress = plan.settle(views, candidates)
        self._apply(conn, instance_id, progress, events, reporter_claims_next=reporter_claims_next)
        outcome = plan.outcome(views)
        if outcome is not None:
            self._finalize(conn, instance_id, plan, outcome, events)

    def _apply(
        self,
        conn: Connection,
        instance_id: str,
        progress: Progress,
        events: list[_Event],
        *,
        reporter_claims_next: bool,
    ) -> None:
        if progress.queued:
            conn.execute(
                self.q.step_queue_if_pending,
                [
                    {
                        "p_instance_id": instance_id,
                        "p_name": name,
                        "p_inputs_from": json.dumps(inputs_from) if inputs_from else None,
                    }
                    for name, inputs_from in progress.queued.items()
                ],
            )
            events.extend(_event(instance_id, "queued", name) for name in progress.queued)
            if len(progress.queued) > 1 or not reporter_claims_next:
                self._announce_work(conn)
        for names, state in ((progress.skipped, Status.SKIPPED), (progress.cancelled, Status.CANCELLED)):
            if names:
                conn.execute(
                    self.q.steps_close_if_pending,
                    {"p_instance_id": instance_id, "p_names": names, "p_state": state.value},
                )
                events.extend(_event(instance_id, state.value.lower(), name) for name in names)

    def _finalize(
        self,
        conn: Connection,
        instance_id: str,
        plan: WorkflowPlan,
        outcome: Status,
        events: list[_Event],
    ) -> None:
        result = error = None
        if outcome is Status.SUCCEEDED:
            found = conn.execute(
                self.q.step_results, {"p_instance_id": instance_id, "p_names": list(plan.outputs)}
            ).all()
            texts = {r.name: r.result for r in found}
            parts = [texts.get(name) or "null" for name in plan.outputs]
            result = parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]"
        else:
            failure = conn.execute(self.q.step_first_failure, {"p_instance_id": instance_id}).first()
            if failure is not None:
                error = f"step {failure.name!r} failed: {failure.error}"
        finished = conn.execute(
            self.q.instance_finish,
            {"p_instance_id": instance_id, "p_status": outcome.value, "p_result": result, "p_error": error},
        )
        if finished.rowcount == 1:
            events.append(_event(instance_id, f"instance_{outcome.value.lower()}", detail=error))

    def _append(self, conn: Connection, events: list[_Event]) -> None:
        if events:
            conn.execute(self.q.events_append, events)

    # -- instances -----------------------------------------------------------------------------
    def dispatch_workflow(self, schema: WorkflowSchema, inputs: Mapping[str, Any] | None = None) -> str:
        return self.dispatch_many(schema, [inputs if inputs is not None else {}])[0]

    def dispatch_many(self, schema: WorkflowSchema, inputs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Create one instance per inputs mapping, all in one transaction."""
        encoded = [codec.encode_inputs(i) for i in inputs]
        ids = [new_id() for _ in encoded]
        if not ids:
            self.register_workflows([schema])
            return ids
        plan = self._plans.get(schema.key)
        if self._hot is not None and plan is not None and plan.hash == schema.hash:
            self._dispatch_in_one_statement(plan, ids, encoded)
            return ids
        with self._transaction() as conn:
            plans = self._store_schemas(conn, [schema])
            plan = plans[schema.key]
            roots = set(plan.roots)
            instance_rows, queued_rows, pending_rows, event_rows = [], [], [], []
            for instance_id, text in zip(ids, encoded, strict=True):
                instance_rows.append(
                    {
                        "id": instance_id,
                        "workflow_id": schema.workflow_id,
                        "version": schema.version,
                        "inputs": text,
                    }
                )
                event_rows.append(_event(instance_id, "dispatched"))
                for name in plan.order:
                    row = {
                        "instance_id": instance_id,
                        "workflow_id": schema.workflow_id,
                        "version": schema.version,
                        "name": name,
                        "max_attempts": plan.nodes[name].max_attempts,
                    }
                    if name in roots:
                        queued_rows.append(row)
                        event_rows.append(_event(instance_id, "queued", name))
                    else:
                        pending_rows.append(row)
            if instance_rows:
                conn.execute(self.q.instance_insert, instance_rows)
                conn.execute(self.q.steps_insert_queued, queued_rows)
                if pending_rows:
                    conn.execute(self.q.steps_insert_pending, pending_rows)
                self._append(conn, event_rows)
                self._announce_work(conn)
        self._plans.update(plans)
        return ids

    def _dispatch_in_one_statement(self, plan: WorkflowPlan, ids: list[str], encoded: list[str]) -> None:
        """PostgreSQL: create the instances, their steps and events in one statement."""
        assert self._hot is not None
        roots = set(plan.roots)
        self._hot.dispatch(
            {
                "p_workflow_id": plan.workflow_id,
                "p_version": plan.version,
                "p_ids": ids,
                "p_inputs": encoded,
                "p_names": list(plan.order),
                "p_roots": [name in roots for name in plan.order],
                "p_max_attempts": [plan.nodes[name].max_attempts for name in plan.order],
            }
        )

    def get_instance(self, instance_id: str) -> InstanceInfo:
        instance_id = _instance_uuid(instance_id)
        with self._transaction() as conn:
            row = conn.execute(self.q.instance_get, {"p_instance_id": instance_id}).first()
            if row is None:
                raise UnknownInstance(instance_id)
            step_rows = conn.execute(self.q.steps_of_instances, {"p_instance_ids": [instance_id]}).all()
        return self._info(row, step_rows)

    def list_instances(
        self,
        status: Status | str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[InstanceInfo]:
        query = instances.select().order_by(instances.c.created_at.desc(), instances.c.id.desc())
        if status is not None:
            query = query.where(instances.c.status == Status(status).value)
        if workflow_id is not None:
            query = query.where(instances.c.workflow_id == workflow_id)
        query = query.limit(max(0, int(limit))).offset(max(0, int(offset)))
        with self._transaction() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return []
            step_rows = conn.execute(
                self.q.steps_of_instances, {"p_instance_ids": [r.id for r in rows]}
            ).all()
        by_instance: dict[str, list[Row[Any]]] = {}
        for s in step_rows:
            by_instance.setdefault(s.instance_id, []).append(s)
        return [self._info(r, by_instance.get(r.id, [])) for r in rows]

    def instance_events(self, instance_id: str) -> list[InstanceEvent]:
        instance_id = _instance_uuid(instance_id)
        with self._transaction() as conn:
            if conn.execute(self.q.instance_inputs, {"p_instance_id": instance_id}).first() is None:
                raise UnknownInstance(instance_id)
            rows = conn.execute(self.q.events_of_instance, {"p_instance_id": instance_id}).all()
        return [
            InstanceEvent(
                at=_aware(r.at),  # type: ignore[arg-type]
                kind=r.kind,
                step_name=r.step_name,
                attempt=r.attempt,
                worker_id=r.worker_id,
                detail=r.detail,
            )
            for r in rows
        ]

    def has_running_instances(self, workflows: Sequence[tuple[str, str]] | None = None) -> bool:
        query = self.q.instance_any_running
        params: dict[str, Any] = {}
        if workflows is not None:
            if not workflows:
                return False
            query = self.q.instance_any_running_of
            params["p_keys"] = list(workflows)
        with self._transaction() as conn:
            return conn.execute(query, params).first() is not None

    def list_workers(self) -> list[WorkerInfo]:
        with self._transaction() as conn:
            rows = conn.execute(self.q.workers_list).all()
            running = (
                conn.execute(self.q.steps_running_of_workers, {"p_worker_ids": [r.id for r in rows]}).all()
                if rows
                else []
            )
        held: dict[str, list[str]] = {}
        for r in running:
            held.setdefault(r.worker_id, []).append(f"{r.instance_id}/{r.name}")
        stale_after = timedelta(seconds=2 * self.lease_seconds)
        infos = []
        for r in rows:
            last = _aware(r.last_heartbeat)
            now = _aware(r.db_now)
            infos.append(
                WorkerInfo(
                    worker_id=r.id,
                    host=r.host,
                    pid=r.pid,
                    workflows=[f"{k[0]}@{k[1]}" for k in json.loads(r.workflows)],
                    started_at=_aware(r.started_at),  # type: ignore[arg-type]
                    last_heartbeat=last,  # type: ignore[arg-type]
                    stopped_at=_aware(r.stopped_at),
                    alive=r.stopped_at is None and now - last <= stale_after,  # type: ignore[operator]
                    current_steps=held.get(r.id, []),
                )
            )
        return infos

    def cancel_instance(self, instance_id: str) -> InstanceInfo:
        instance_id = _instance_uuid(instance_id)
        with self._transaction() as conn:
            locked = conn.execute(self.q.instance_lock, {"p_instance_id": instance_id}).first()
            if locked is None:
                raise UnknownInstance(instance_id)
            if locked.status != Status.RUNNING.value:
                raise InvalidTransition(
                    f"instance {instance_id!r} is {locked.status}; only RUNNING instances can be cancelled"
                )
            cancelled = conn.execute(self.q.steps_cancel_unfinished, {"p_instance_id": instance_id}).all()
            conn.execute(
                self.q.instance_finish,
                {
                    "p_instance_id": instance_id,
                    "p_status": Status.CANCELLED.value,
                    "p_result": None,
                    "p_error": None,
                },
            )
            events = [_event(instance_id, "cancelled", r.name, r.attempt) for r in cancelled]
            events.append(_event(instance_id, "instance_cancelled"))
            self._append(conn, events)
        return self.get_instance(instance_id)

    def retry_instance(self, instance_id: str) -> InstanceInfo:
        instance_id = _instance_uuid(instance_id)
        with self._transaction() as conn:
            locked = conn.execute(self.q.instance_lock, {"p_instance_id": instance_id}).first()
            if locked is None:
                raise UnknownInstance(instance_id)
            if locked.status not in (Status.FAILED.value, Status.CANCELLED.value):
                raise InvalidTransition(
                    f"instance {instance_id!r} is {locked.status}; only FAILED or CANCELLED "
                    "instances can be retried"
                )
            plan = self._plan(conn, (locked.workflow_id, locked.version))
            names = list(conn.execute(self.q.steps_broken, {"p_instance_id": instance_id}).scalars())
            if names:
                conn.execute(
                    self.q.step_reset_for_retry,
                    [
                        {"p_instance_id": instance_id, "p_name": n, "p_budget": plan.nodes[n].max_attempts}
                        for n in names
                    ],
                )
            conn.execute(self.q.instance_reopen, {"p_instance_id": instance_id})
            events = [_event(instance_id, "retried")]
            order = {name: i for i, name in enumerate(plan.order)}
            self._advance(conn, instance_id, plan, sorted(names, key=order.__getitem__), events)
            self._append(conn, events)
        return self.get_instance(instance_id)

    # -- building results --------------------------------------------------------------------
    def _info(self, row: Row[Any], step_rows: Sequence[Row[Any]]) -> InstanceInfo:
        return InstanceInfo(
            instance_id=row.id,
            workflow_id=row.workflow_id,
            version=row.version,
            status=Status(row.status),
            inputs=codec.decode(row.inputs),
            result=codec.decode(row.result),
            error=row.error,
            created_at=_aware(row.created_at),  # type: ignore[arg-type]
            finished_at=_aware(row.finished_at),
            steps=[
                StepInfo(
                    name=s.name,
                    state=Status(s.state),
                    attempt=s.attempt,
                    result=codec.decode(s.result),
                    error=s.error,
                    worker_id=s.worker_id,
                    started_at=_aware(s.started_at),
                    finished_at=_aware(s.finished_at),
                    max_attempts=s.max_attempts,
                )
                for s in step_rows
            ],
        )
