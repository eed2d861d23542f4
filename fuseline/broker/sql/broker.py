"""``SqlBroker``: the broker contract on PostgreSQL or SQLite, as a facade over one module per job.

- :mod:`.database`: transactions, one-statement operations, wake-ups, errors;
- :mod:`.claiming`: claims, from the claim floors, reaping on the way;
- :mod:`.workers` and :mod:`.leases`: registration, heartbeats, liveness, expired leases;
- :mod:`.reporting`: fenced reports; :mod:`.rules`: the DAG rules applied to stored steps;
- :mod:`.instances`: dispatch, reads, cancel and retry.

Every operation is one short transaction (or one statement). Lock order is
always instance, then steps, so reports, cancels, retries and the reaper
never deadlock; claims lock only QUEUED rows and skip locked ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from ...errors import BrokerError
from ...workflow.schema import WorkflowSchema, check_name
from .. import base as contract
from .. import codec
from ..dispatching import Dispatch
from ..ids import instance_uuid
from ..repairs import RepairAction, RepairPlan
from . import migrate as schema_migrations
from .claimfloor import ClaimFloors, NoFloors
from .claiming import Claimer, OneStatementClaims, TransactionClaims
from .database import Database, PostgresDatabase, SqliteDatabase
from .dispatching import InstanceCreation, OneStatementDispatch
from .engine import IDLE_IN_TRANSACTION_SECONDS, configure_sqlite, create_database_engine, parse_url
from .explain import Explainer
from .history import History
from .instances import Instances
from .leases import HeldLeases, Reaper
from .pg_connections import DEFAULT_CONNECTIONS
from .plans import PlanCache
from .queries import claims, definitions, events, explain, instances, leases, reports, shapes, workers
from .repairs import Repairs
from .reporting import OneStatementReports, Reporter
from .retention import DEFAULT_RETENTION, PruneCounts, Pruner, RetentionPasses, retention_seconds
from .rules import InstanceRules
from .schedules import SqlSchedules, SqlScheduling
from .shapes import ShapeRules
from .timers import Timers
from .workers import WorkerRegistry

#: Connections of a broker's engine beyond its own (for code that borrows ``broker.engine``).
ENGINE_OVERFLOW = 4


class SqlBroker(SqlScheduling, contract.Broker):
    """The broker on a SQL database shared by any number of worker processes.

    ``url_or_engine`` is a database URL (``postgresql+psycopg://...`` or
    ``sqlite:///file.db``) or an SQLAlchemy Engine. The database must be
    migrated (``fuseline db upgrade``); ``migrate=True`` upgrades it instead,
    which the embedded SQLite default does. ``listen=False`` turns off
    LISTEN/NOTIFY wake-ups, leaving idle workers to poll; a URL ending in
    ``?pooler=transaction`` (behind PgBouncer in transaction mode) does that
    and turns off server-side prepared statements (see :mod:`.engine`). On
    PostgreSQL the broker holds ``connections`` connections (opened together,
    see :mod:`.pg_connections`), plus one to listen on. ``fast_paths=False``
    runs every operation on the general (multi-statement) path, which the
    one-statement forms must match; it is there for tests and for comparing
    the two. ``retention`` (seconds or a timedelta; 0 or
    None keeps everything): finished instances older than that are deleted by the brokers
    that claim, with their steps, events and signals (see :mod:`.retention`).
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        lease_seconds: float = contract.DEFAULT_LEASE_SECONDS,
        max_result_bytes: int = contract.DEFAULT_MAX_RESULT_BYTES,
        migrate: bool = False,
        listen: bool = True,
        connections: int = DEFAULT_CONNECTIONS,
        fast_paths: bool = True,
        retention: float | timedelta | None = DEFAULT_RETENTION,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        if connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        self.lease_seconds = float(lease_seconds)
        self.max_result_bytes = max_result_bytes
        self.retention = retention_seconds(retention)
        engine = self._engine(url_or_engine, connections)
        self.engine = engine
        self.db: Database = (
            PostgresDatabase(engine, connections=connections, listen=listen)
            if engine.dialect.name == "postgresql"
            else SqliteDatabase(engine)
        )
        self.url = self.db.url
        try:
            if migrate:
                schema_migrations.ensure_current(engine)
            else:
                schema_migrations.check_current(engine)
        except DBAPIError as exc:
            self.close()
            raise self.db.translate(exc, "cannot use the database") from None
        except BaseException:
            self.close()
            raise
        self._build(fast_paths and isinstance(self.db, PostgresDatabase))

    def _engine(self, url_or_engine: str | URL | Engine, connections: int) -> Engine:
        """The engine to use; one made here from a URL is this broker's to dispose of."""
        if isinstance(url_or_engine, Engine):
            self._owns_engine = False
            if url_or_engine.dialect.name == "sqlite":
                configure_sqlite(url_or_engine)
            return url_or_engine
        self._owns_engine = True
        if parse_url(url_or_engine).get_backend_name() == "sqlite":
            return create_database_engine(url_or_engine)
        # A transaction idle this long lost its worker: let the server end it (see engine.py).
        idle_seconds = max(1.0, min(self.lease_seconds / 2, IDLE_IN_TRANSACTION_SECONDS))
        # The broker itself uses its budget and the LISTEN connection, never more; the overflow
        # serves code that borrows ``broker.engine`` (tools, tests).
        return create_database_engine(
            url_or_engine,
            idle_in_transaction_seconds=idle_seconds,
            pool_size=connections + 1,
            max_overflow=ENGINE_OVERFLOW,
        )

    def _build(self, one_statement: bool) -> None:
        """Wire the jobs together; ``one_statement`` picks PostgreSQL's one-statement forms."""
        dialect = self.engine.dialect.name
        q_claims, q_events, q_reports = (
            claims.for_dialect(dialect),
            events.for_dialect(dialect),
            reports.for_dialect(dialect),
        )
        q_leases, q_workers = leases.for_dialect(dialect), workers.for_dialect(dialect)
        self._plans = PlanCache(definitions.for_dialect(dialect))
        held = HeldLeases()
        floors: ClaimFloors = ClaimFloors() if one_statement else NoFloors()
        rules = InstanceRules(q_reports, q_claims, self.db.announce_work)
        self._shapes = ShapeRules(
            shapes.for_dialect(dialect), q_reports, q_claims, self._plans, self.max_result_bytes
        )
        rules.shapes, self._shapes.rules, self._events = self._shapes, rules, q_events
        self._workers = WorkerRegistry(
            self.db, q_workers, q_leases, q_events, self._plans, held, self.lease_seconds
        )
        reaper = Reaper(
            self.db, q_leases, q_reports, q_events, rules, self._plans, floors, q_claims,
            interval=max(0.05, min(self.lease_seconds / 4, 5.0)),
        )  # fmt: skip
        dead_after = self._workers.dead_after
        general = TransactionClaims(self.db, q_claims, q_workers, self.lease_seconds, dead_after)
        if one_statement:
            assert isinstance(self.db, PostgresDatabase)
            source: OneStatementClaims | TransactionClaims = OneStatementClaims(
                self.db, self.lease_seconds, dead_after
            )
            fast_reports = OneStatementReports(self.db, source)  # type: ignore[arg-type]
            fast_dispatch = OneStatementDispatch(self.db)
        else:
            source, fast_reports, fast_dispatch = general, None, None
        timers = Timers(self.db, q_reports, q_events, rules, self._plans)
        self._claimer = Claimer(source, general, floors, reaper, timers, self._workers, held)
        self._reporter = Reporter(
            self.db, q_reports, q_events, rules, self._plans, self._workers, held, self._claimer,
            fast_reports, self.max_result_bytes,
        )  # fmt: skip
        q_instances = instances.for_dialect(dialect)
        self._instances = Instances(self.db, q_instances, q_reports, q_events, rules, self._plans)
        self._repairs = Repairs(self.db, self._instances, self.max_result_bytes)
        self._creation = InstanceCreation(
            self.db, q_instances, q_events, self._plans, fast_dispatch, self._shapes
        )
        self._shapes.creation = self._creation
        self._schedules = SqlSchedules.on(self.db, self._plans, self._creation)
        self._explainer = Explainer(
            self.db, explain.for_dialect(dialect), q_claims, q_instances, self._plans, dead_after
        )
        background = isinstance(self.db, PostgresDatabase)  # SQLite: one writer anyway, inline
        self._retention = RetentionPasses(Pruner.on(self.db), self.retention, background=background)

    @classmethod
    def for_url(cls, url: str | URL, **options: Any) -> SqlBroker:
        """A broker on ``url``: a SQLite database (the embedded default) is created and upgraded
        on first use; a PostgreSQL one must be upgraded by its owner (``fuseline db upgrade``)."""
        options.setdefault("migrate", parse_url(url).get_backend_name() == "sqlite")
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"SqlBroker({self.url!r}, lease_seconds={self.lease_seconds:g})"

    def close(self) -> None:
        if getattr(self, "_retention", None) is not None:
            self._retention.close()
        if getattr(self, "db", None) is not None:
            self.db.close()
        if getattr(self, "_owns_engine", False):
            self.engine.dispose()

    # -- workers -------------------------------------------------------------------------
    def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None:
        with self.db.transaction() as conn:
            plans = self._plans.store(conn, schemas)
        self._plans.remember(plans)

    def register_worker(
        self,
        schemas: Sequence[WorkflowSchema],
        *,
        host: str | None = None,
        pid: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> str:
        return self._workers.register(schemas, host, pid, queues)

    def deregister_worker(self, worker_id: str) -> None:
        self._workers.deregister(worker_id)

    def keep_alive(self, worker_id: str) -> list[contract.Lease]:
        return self._workers.keep_alive(worker_id)

    def release_steps(self, worker_id: str, assignments: Sequence[contract.StepAssignment]) -> None:
        self._workers.release(worker_id, assignments)

    def list_workers(self) -> list[contract.WorkerInfo]:
        return self._workers.list()

    def wait_for_work(self, timeout: float) -> bool:
        """PostgreSQL: wait for a NOTIFY from a transaction that queued work; SQLite: a short poll."""
        return self.db.wait_for_work(timeout)

    # -- claims and reports ----------------------------------------------------------------
    def get_step(self, worker_id: str) -> contract.StepAssignment | None:
        self._schedules.fire_due()  # running workers fire due schedules: no daemon
        self._retention.due()  # and prune what outlived the retention
        claimed = self._claimer.claim(worker_id, 1)
        return claimed[0] if claimed else None

    def get_steps(self, worker_id: str, limit: int) -> list[contract.StepAssignment]:
        """The whole batch in one statement on PostgreSQL; one claim at a time elsewhere."""
        self._schedules.fire_due()
        self._retention.due()
        return self._claimer.claim(worker_id, max(1, limit))

    def report_step(self, worker_id: str, report: contract.StepReport) -> None:
        self._reporter.report(worker_id, report)

    def report_steps(
        self, worker_id: str, reports: Sequence[contract.StepReport]
    ) -> list[BrokerError | None]:
        return self._reporter.report_many(worker_id, reports)

    def report_and_claim(self, worker_id: str, report: contract.StepReport) -> contract.StepAssignment | None:
        self._schedules.fire_due()
        self._retention.due()
        return self._reporter.report_and_claim(worker_id, report)

    # -- instances -------------------------------------------------------------------------
    def dispatch_instances(self, schema: WorkflowSchema, dispatches: Sequence[Dispatch]) -> list[str]:
        return self._creation.dispatch(schema, dispatches)

    def explain_instance(self, instance_id: str) -> list[contract.StepExplanation]:
        return self._explainer.explain(instance_id)

    def get_instance(self, instance_id: str) -> contract.InstanceInfo:
        return self._instances.get(instance_id)

    def instances_page(self, page: contract.InstancePage) -> list[contract.InstanceInfo]:
        return self._instances.list(page)

    def instance_events(self, instance_id: str) -> list[contract.InstanceEvent]:
        return self._instances.history(instance_id)

    def has_running_instances(self, workflows: Sequence[tuple[str, str]] | None = None) -> bool:
        return self._instances.any_running(workflows)

    def signal(self, instance_id: str, name: str, data: Any = None) -> None:
        check_name("signal name", name)
        instance_id = instance_uuid(instance_id)
        text = codec.encode_result(f"signal {name!r}", data, self.max_result_bytes)
        history = History()
        with self.db.transaction() as conn:
            self._shapes.signal(conn, instance_id, name, text, history)
            history.write(conn, self._events)

    def cancel_instance(self, instance_id: str) -> contract.InstanceInfo:
        return self._instances.cancel(instance_id)

    def retry_instance(
        self, instance_id: str, from_step: str | None = None, *, operator: str | None = None
    ) -> contract.InstanceInfo:
        if from_step is None:
            return self._instances.retry(instance_id)
        self._repairs.repair(instance_id, RepairAction.RETRY_FROM, from_step, None, operator, apply=True)
        return self._instances.get(instance_id)

    def skip_step(self, instance_id: str, step: str, *, operator: str | None = None) -> contract.InstanceInfo:
        self._repairs.repair(instance_id, RepairAction.SKIP, step, None, operator, apply=True)
        return self._instances.get(instance_id)

    def set_step_output(
        self, instance_id: str, step: str, result: Any, *, operator: str | None = None
    ) -> contract.InstanceInfo:
        self._repairs.repair(instance_id, RepairAction.SET_OUTPUT, step, result, operator, apply=True)
        return self._instances.get(instance_id)

    def plan_repair(
        self,
        instance_id: str,
        action: RepairAction,
        step: str,
        result: Any = None,
        *,
        operator: str | None = None,
    ) -> RepairPlan:
        return self._repairs.repair(instance_id, RepairAction(action), step, result, operator, apply=False)

    # -- retention -------------------------------------------------------------------------
    def prune(self, older_than: float | timedelta | None = None, *, dry_run: bool = False) -> PruneCounts:
        """Delete now the instances finished more than ``older_than`` ago (default 7 days; 0
        keeps everything) with their steps, events and signals, and the rows of workers stopped
        for more than a day, in the same small batches as the workers' passes; the rows per
        table. ``dry_run`` counts them and changes nothing."""
        age = retention_seconds(DEFAULT_RETENTION if older_than is None else older_than)
        if age is None:
            return PruneCounts()
        pruner = Pruner.on(self.db)
        return pruner.count(age) if dry_run else pruner.prune(age)
