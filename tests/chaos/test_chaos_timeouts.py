"""Statement and lock timeouts set on fuseline's role (issue 16, case 3; RELIABILITY item 23).

Each test creates a login role of its own and sets the timeouts on it with ``ALTER ROLE ...
SET``, as an operator would, then checks that a plain statement of that role is really
cancelled (so what follows is meaningful). Statements are made to hit the timeouts on purpose:
a trigger sleeps longer than ``statement_timeout`` in a share of the role's writes to
``fuseline_steps`` and ``fuseline_workers``; the test takes ``LOCK TABLE fuseline_steps`` for
longer than ``lock_timeout``, again and again; an event trigger slows one statement of a
migration; the test holds the upgrade lock.

- A report cancelled by ``statement_timeout`` changed nothing; sent again it is accepted, and
  once more it is a replay: one success. A claim or a dispatch cancelled takes or adds nothing.
  A claim cancelled by an operator (``pg_cancel_backend``, also 57014) is retried the same way.
  A retention batch stuck past its own 2 s lock timeout is put off with one warning, as before.
- Real ``fuseline worker run`` processes of the role drain diamonds dispatched by the role.
  Pass: every instance SUCCEEDED with the right result, each step accepted exactly once, no
  worker exited, the workers logged one WARNING line per retry naming the setting (no
  traceback), both timeouts were hit, and ``fuseline db verify`` (as the role) is clean.
- ``fuseline db upgrade`` as a role with ``statement_timeout`` and ``lock_timeout`` succeeds
  although a migration statement takes longer than the statement timeout (alembic run without
  fuseline's settings fails on it) and it waits longer than both for a concurrent upgrade;
  so does ``SqlBroker(..., migrate=True)`` after a downgrade.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from fuseline import Status, StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql import migrate as schema_migrations
from fuseline.broker.sql.migrate import HEAD_REVISION, alembic_config
from fuseline.broker.sql.models import instances
from fuseline.broker.sql.retention import Pruner, RetentionPasses
from fuseline.errors import StatementCancelled
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import (
    assert_each_step_accepted_once,
    assert_invariants,
    ledger_by_step,
    load_history,
)
from tests.chaos.scale import FULL, TIMEOUTS, pick, report
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, wait_for, worker_env
from tests.conftest import url_text
from tests.support.databases import PostgresServer

pytestmark = pytest.mark.slow

#: The role's settings in the drain; the slow statements sleep well past the statement timeout.
STATEMENT_TIMEOUT = "250ms"
LOCK_TIMEOUT = "100ms"
SLOW_SECONDS = 0.6
#: The share of the role's writes to fuseline_steps and fuseline_workers that are slow.
SLOW_SHARE = 0.03
#: The test takes LOCK TABLE fuseline_steps this often, for this long (more than LOCK_TIMEOUT).
LOCK_EVERY_SECONDS = 3.0
#: How long the trigger makes a claim sleep while the test cancels it with pg_cancel_backend.
OPERATOR_CANCEL_SLEEP_SECONDS = 5.0
LOCK_HOLD_SECONDS = 0.4
DRAIN_LIMIT_SECONDS = pick(120.0, 900.0)
DISPATCH_BATCH = 5
#: Dispatches of one batch before the test gives up (each fails with probability ~SLOW_SHARE).
DISPATCH_TRIES = 30

#: What the workers log for each retry (fuseline.engines.retry) and each failed heartbeat.
STATEMENT_RETRY = (
    "statement cancelled by statement_timeout (57014); its transaction was rolled back; retrying"
)
LOCK_RETRY = "statement cancelled by lock_timeout (55P03); its transaction was rolled back; retrying"
HEARTBEAT_RETRY = "heartbeat failed, retrying at the next beat"

#: The upgrade test's role settings; the slowed migration statement sleeps past them.
UPGRADE_STATEMENT_TIMEOUT = "100ms"
UPGRADE_LOCK_TIMEOUT = "50ms"
MIGRATION_SLOW_SECONDS = 0.4
UPGRADE_LOCK_HOLD_SECONDS = 1.0


def _libpq(url: URL) -> str:
    return url_text(url.set(drivername="postgresql"))


def _execute(url: URL, *statements: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@dataclass
class TimeoutRole:
    """A login role made by the test, dropped (with what it owns or was granted) at the end."""

    name: str
    server: PostgresServer
    databases: list[str] = field(default_factory=list)

    def url(self, database: URL) -> URL:
        return database.set(username=self.name, password=None)

    def grant_data(self, database: URL) -> None:
        """What a runtime role has (docs/least-privilege.sql): DML on the tables, the sequences."""
        self.databases.append(str(database.database))
        _execute(
            database,
            f'GRANT CONNECT ON DATABASE "{database.database}" TO {self.name}',
            f"GRANT USAGE ON SCHEMA public TO {self.name}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {self.name}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {self.name}",
        )

    def own(self, database: URL) -> None:
        """Make the role the database's owner, so it may create fuseline's tables."""
        self.databases.append(str(database.database))
        _execute(self.server.admin_url, f'ALTER DATABASE "{database.database}" OWNER TO {self.name}')

    def set_timeouts(self, statement_timeout: str, lock_timeout: str) -> None:
        _execute(
            self.server.admin_url,
            f"ALTER ROLE {self.name} SET statement_timeout = '{statement_timeout}'",
            f"ALTER ROLE {self.name} SET lock_timeout = '{lock_timeout}'",
        )

    def drop(self) -> None:
        admin = self.server.admin_url
        with psycopg.connect(_libpq(admin), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [self.name]
            )
            existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
        for database in dict.fromkeys(self.databases):
            if database in existing:
                _execute(
                    admin.set(database=database),
                    f"REASSIGN OWNED BY {self.name} TO CURRENT_USER",
                    f"DROP OWNED BY {self.name}",
                )
        _execute(admin, f"DROP ROLE IF EXISTS {self.name}")


@pytest.fixture
def timeout_role(postgres_server: PostgresServer) -> Iterator[TimeoutRole]:
    role = TimeoutRole(f"fl_timeouts_{uuid.uuid4().hex[:10]}", postgres_server)
    _execute(postgres_server.admin_url, f"CREATE ROLE {role.name} LOGIN")
    try:
        yield role
    finally:
        role.drop()


def assert_statements_of_the_role_are_cancelled(url: URL, statement_timeout: str, lock_timeout: str) -> None:
    """The timeouts are really the role's: a new session of it has them, and a slow statement fails."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        settings = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
        assert settings.fetchone() == (statement_timeout, lock_timeout)
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(1)")


def slow_statements(database: URL, role: str, share: float, seconds: float = SLOW_SECONDS) -> None:
    """Make ``share`` of the role's writes to fuseline_steps and fuseline_workers sleep
    ``seconds``, past its statement timeout (a statement-level trigger: one sleep per statement)."""
    _execute(
        database,
        f"""CREATE FUNCTION timeouts_slow_statement() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF session_user = '{role}' AND random() < {share} THEN
                    PERFORM pg_sleep({seconds});
                END IF;
                RETURN NULL;
            END $$""",
        "CREATE TRIGGER timeouts_slow_steps AFTER INSERT OR UPDATE ON fuseline_steps "
        "FOR EACH STATEMENT EXECUTE FUNCTION timeouts_slow_statement()",
        "CREATE TRIGGER timeouts_slow_workers AFTER UPDATE ON fuseline_workers "
        "FOR EACH STATEMENT EXECUTE FUNCTION timeouts_slow_statement()",
    )


def test_a_report_cancelled_by_the_roles_statement_timeout_changed_nothing_and_is_accepted_once(
    chaos_postgres: ChaosDatabase, timeout_role: TimeoutRole
) -> None:
    database = make_url(chaos_postgres.url)
    timeout_role.grant_data(database)
    timeout_role.set_timeouts(STATEMENT_TIMEOUT, LOCK_TIMEOUT)
    role_url = timeout_role.url(database)
    assert_statements_of_the_role_are_cancelled(role_url, STATEMENT_TIMEOUT, LOCK_TIMEOUT)
    slow_statements(database, timeout_role.name, share=1.0)
    slowing = (
        "ALTER TABLE fuseline_steps ENABLE TRIGGER timeouts_slow_steps",
        "ALTER TABLE fuseline_workers ENABLE TRIGGER timeouts_slow_workers",
    )
    normal = (
        "ALTER TABLE fuseline_steps DISABLE TRIGGER timeouts_slow_steps",
        "ALTER TABLE fuseline_workers DISABLE TRIGGER timeouts_slow_workers",
    )
    _execute(database, *normal)

    broker = SqlBroker(role_url, listen=False)
    try:
        schema = flows.unit.to_schema()
        broker.register_workflows([schema])
        worker = broker.register_worker([schema])
        _execute(database, *slowing)
        with pytest.raises(StatementCancelled, match=r"statement_timeout \(57014\)"):
            broker.dispatch_many(schema, [{"n": 1}, {"n": 2}])
        _execute(database, *normal)
        assert broker.list_instances() == []  # the dispatch was rolled back whole
        first, second = broker.dispatch_many(schema, [{"n": 1}, {"n": 2}])

        _execute(database, *slowing)
        with pytest.raises(StatementCancelled, match=r"statement_timeout \(57014\)"):
            broker.get_step(worker)
        _execute(database, *normal)
        assert broker.get_instance(first).step("unit").state is Status.QUEUED  # the claim took nothing

        held = broker.get_step(worker)
        assert held is not None and held.instance_id == first
        report = StepReport(
            held.workflow_id,
            first,
            held.step_name,
            Status.SUCCEEDED,
            1,
            attempt=held.attempt,
            version=held.version,
        )
        _execute(database, *slowing)
        with pytest.raises(StatementCancelled, match=r"statement_timeout \(57014\)"):
            broker.report_step(worker, report)
        _execute(database, *normal)
        step = broker.get_instance(first).step("unit")
        assert (step.state, step.attempt) == (Status.RUNNING, held.attempt)  # rolled back: not accepted

        broker.report_step(worker, report)  # the retry is the first delivery
        broker.report_step(worker, report)  # and an exact replay of an accepted report changes nothing
        assert broker.get_instance(first).status is Status.SUCCEEDED
        assert broker.get_instance(second).step("unit").state is Status.QUEUED  # queued, untouched
    finally:
        broker.close()
    history = load_history(chaos_postgres.engine, ledger=False)
    assert_each_step_accepted_once(history, [first], ("unit",))


def test_a_claim_cancelled_by_an_operator_is_retried_like_a_timeout(
    chaos_postgres: ChaosDatabase, timeout_role: TimeoutRole
) -> None:
    """pg_cancel_backend also raises 57014: fuseline's transactions are short and fenced, so
    it is retried too (see ``engine.statement_cancelled``), with its own words in the message."""
    database = make_url(chaos_postgres.url)
    timeout_role.grant_data(database)
    role_url = timeout_role.url(database)
    broker = SqlBroker(role_url, listen=False)
    try:
        schema = flows.unit.to_schema()
        worker = broker.register_worker([schema])
        (instance,) = broker.dispatch_many(schema, [{"n": 1}])
        slow_statements(database, timeout_role.name, share=1.0, seconds=OPERATOR_CANCEL_SLEEP_SECONDS)
        cancels: list[int] = []

        def cancel_the_sleeping_claim() -> None:
            with psycopg.connect(_libpq(database), autocommit=True) as conn:
                found = wait_for(
                    lambda: conn.execute(
                        "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                        "WHERE usename = %s AND wait_event = 'PgSleep'",
                        [timeout_role.name],
                    ).fetchone()[0],  # type: ignore[index]
                    OPERATOR_CANCEL_SLEEP_SECONDS,
                    "the claim to sleep in the trigger",
                )
                cancels.append(found)

        canceller = threading.Thread(target=cancel_the_sleeping_claim, daemon=True)
        canceller.start()
        with pytest.raises(StatementCancelled, match=r"on request \(pg_cancel_backend.*\(57014\)"):
            broker.get_step(worker)
        canceller.join(timeout=10)
        assert cancels == [1]
        _execute(
            database,
            "DROP TRIGGER timeouts_slow_steps ON fuseline_steps",
            "DROP TRIGGER timeouts_slow_workers ON fuseline_workers",
        )
        held = broker.get_step(worker)  # what the worker does next: the same claim, again
        assert held is not None and (held.instance_id, held.attempt) == (instance, 1)
    finally:
        broker.close()


def test_a_retention_batch_that_waits_past_its_own_lock_timeout_is_put_off_not_retried(
    chaos_postgres: ChaosDatabase, timeout_role: TimeoutRole, caplog: pytest.LogCaptureFixture
) -> None:
    """Retention sets ``lock_timeout = '2s'`` for its batch itself: a batch stuck behind a row
    lock fails (55P03, now a StatementCancelled) and the pass is put off with one warning, as
    before; it is not turned into a retry loop."""
    database = make_url(chaos_postgres.url)
    timeout_role.grant_data(database)
    broker = SqlBroker(timeout_role.url(database), listen=False, retention=None)
    try:
        schema = flows.unit.to_schema()
        worker = broker.register_worker([schema])
        (instance,) = broker.dispatch_many(schema, [{"n": 1}])
        held = broker.get_step(worker)
        assert held is not None
        broker.report_step(
            worker,
            StepReport(
                held.workflow_id, instance, "unit", Status.SUCCEEDED, 1, attempt=1, version=held.version
            ),
        )
        with chaos_postgres.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE fuseline_instances SET finished_at = now() - interval '1 day'")
        passes = RetentionPasses(Pruner.on(broker.db), 3600.0, background=False)
        with psycopg.connect(_libpq(database)) as holder:  # a transaction holding the step's row
            holder.execute("SELECT 1 FROM fuseline_steps FOR UPDATE").fetchall()
            began = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="fuseline.broker.sql.retention"):
                passes._one_batch(3600.0)
            waited = time.monotonic() - began
            holder.rollback()
        put_off = [r.getMessage() for r in caplog.records if "pruning put off" in r.getMessage()]
        assert len(put_off) == 1 and "lock_timeout (55P03)" in put_off[0], put_off
        assert 2.0 <= waited < 10.0, waited
        assert broker.get_instance(instance).status is Status.SUCCEEDED  # nothing deleted
        assert broker.prune(3600.0).instances == 1  # and the next pass deletes it
    finally:
        broker.close()


class TableLocker(threading.Thread):
    """Takes ``LOCK TABLE fuseline_steps IN EXCLUSIVE MODE`` (every write and claim waits) for
    LOCK_HOLD_SECONDS every LOCK_EVERY_SECONDS, as the superuser (no lock timeout)."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.holds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(LOCK_EVERY_SECONDS - LOCK_HOLD_SECONDS):
                with self.engine.begin() as conn:
                    conn.exec_driver_sql("LOCK TABLE fuseline_steps IN EXCLUSIVE MODE")
                    self.holds += 1
                    time.sleep(LOCK_HOLD_SECONDS)
        except BaseException as exc:
            self.error = exc


def dispatch_retrying(url: URL, inputs: list[dict]) -> tuple[list[str], int]:
    """Dispatch as the role, sending a batch again when a timeout cancelled it; (ids, cancels)."""
    broker = SqlBroker(url, listen=False)
    ids: list[str] = []
    cancelled = 0
    try:
        schema = flows.diamond.to_schema()
        for start in range(0, len(inputs), DISPATCH_BATCH):
            for _ in range(DISPATCH_TRIES):
                try:
                    ids += broker.dispatch_many(schema, inputs[start : start + DISPATCH_BATCH])
                    break
                except StatementCancelled:
                    cancelled += 1
            else:
                raise AssertionError(f"a dispatch was cancelled {DISPATCH_TRIES} times in a row")
    finally:
        broker.close()
    return ids, cancelled


def unfinished(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(instances)
            .where(instances.c.status.not_in(["SUCCEEDED", "FAILED", "CANCELLED"]))
        ).scalar_one()


@pytest.mark.timeout(DRAIN_LIMIT_SECONDS + 120)
def test_workers_of_a_role_with_timeouts_retry_cancelled_statements_and_accept_each_step_once(
    chaos_postgres: ChaosDatabase, timeout_role: TimeoutRole, tmp_path: Path
) -> None:
    db, cfg = chaos_postgres, TIMEOUTS
    database = make_url(db.url)
    timeout_role.grant_data(database)
    timeout_role.set_timeouts(STATEMENT_TIMEOUT, LOCK_TIMEOUT)
    role_url = timeout_role.url(database)
    assert_statements_of_the_role_are_cancelled(role_url, STATEMENT_TIMEOUT, LOCK_TIMEOUT)
    slow_statements(database, timeout_role.name, share=SLOW_SHARE)

    locker = TableLocker(db.engine)
    options = ("--lease-seconds", str(cfg.lease_seconds), "--poll-interval", "0.2")
    began = time.monotonic()
    with Workers(tmp_path / "workers", url_text(role_url), "tests.chaos.flows:diamond", *options) as fleet:
        for _ in range(cfg.workers):
            fleet.start()
        locker.start()
        try:
            ids, dispatch_cancels = dispatch_retrying(role_url, [{"n": n} for n in range(cfg.instances)])
            while unfinished(db.engine):
                assert time.monotonic() - began < DRAIN_LIMIT_SECONDS, (
                    f"not drained within {DRAIN_LIMIT_SECONDS:g} s:\n{fleet.logs(fleet.alive())}"
                )
                broken = fleet.unexpected_exits()
                assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
                assert locker.error is None, locker.error
                time.sleep(0.1)
            seconds = time.monotonic() - began
        finally:
            locker.stop.set()
            locker.join(timeout=10)
        assert locker.error is None, locker.error
        broken = fleet.unexpected_exits()
        assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
        for worker in fleet.started:
            wait_for(lambda w=worker: "started (pid" in w.stderr, 10, f"worker {worker.pid} to start")
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        logs = [w.stderr for w in fleet.started]

    troubled = [log for log in logs if "Traceback" in log or " ERROR " in log]
    assert not troubled, "\n".join(troubled)[-4000:]
    statement_retries = sum(log.count(STATEMENT_RETRY) for log in logs)
    lock_retries = sum(log.count(LOCK_RETRY) for log in logs)
    heartbeat_cancels = sum(
        line.count("(57014)") + line.count("(55P03)")
        for log in logs
        for line in log.splitlines()
        if HEARTBEAT_RETRY in line
    )
    assert statement_retries > 0, "no claim or report hit the statement timeout: the test tested nothing"
    assert lock_retries > 0, "no claim or report hit the lock timeout: the test tested nothing"

    history = load_history(db.engine)
    assert len(ids) == cfg.instances == len(history.instance_states), "a retried dispatch added instances"
    for n, instance_id in enumerate(ids):
        status, result = history.instance_states[instance_id]
        assert (status, result) == ("SUCCEEDED", str(flows.diamond_result(n))), (instance_id, status, result)
    assert_each_step_accepted_once(history, ids, flows.DIAMOND_STEPS)
    executions = ledger_by_step(history, dict(enumerate(ids)), flows.DIAMOND_STEPS)
    assert_invariants(db.engine)
    verified = subprocess.run(
        [str(SCRIPT), "db", "verify"],
        cwd=REPOSITORY,
        env=worker_env(url_text(role_url)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0 and "every invariant holds" in verified.stdout, (
        verified.stdout + verified.stderr
    )

    report(
        "statement_and_lock_timeouts",
        {
            "workers": cfg.workers,
            "instances": cfg.instances,
            "steps": len(ids) * len(flows.DIAMOND_STEPS),
            "statement_timeout": STATEMENT_TIMEOUT,
            "lock_timeout": LOCK_TIMEOUT,
            "slow_share": SLOW_SHARE,
            "table_locks_taken": locker.holds,
            "statement_timeouts_retried": statement_retries,
            "lock_timeouts_retried": lock_retries,
            "heartbeats_cancelled": heartbeat_cancels,
            "dispatches_cancelled_and_resent": dispatch_cancels,
            "steps_run_twice": sum(len(rows) - 1 for rows in executions.values()),
            "drain_seconds": round(seconds, 2),
            "full_scale": FULL,
        },
    )


def slow_migration_statement(database: URL, role: str) -> None:
    """An event trigger (the superuser's) that makes the role's creation of fuseline's version
    table, the first statement of a migration, sleep past the role's statement timeout."""
    _execute(
        database,
        f"""CREATE FUNCTION timeouts_slow_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
            DECLARE command record;
            BEGIN
                FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
                    IF session_user = '{role}'
                       AND command.object_identity = 'public.fuseline_alembic_version' THEN
                        PERFORM pg_sleep({MIGRATION_SLOW_SECONDS});
                    END IF;
                END LOOP;
            END $$""",
        "CREATE EVENT TRIGGER timeouts_slow_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE') "
        "EXECUTE FUNCTION timeouts_slow_ddl()",
    )


def test_db_upgrade_as_a_role_with_timeouts_sets_its_own_and_waits_its_turn(
    postgres_server: PostgresServer, timeout_role: TimeoutRole, tmp_path: Path
) -> None:
    database = postgres_server.create_database("fuseline_timeouts")
    try:
        timeout_role.own(database)
        timeout_role.set_timeouts(UPGRADE_STATEMENT_TIMEOUT, UPGRADE_LOCK_TIMEOUT)
        role_url = timeout_role.url(database)
        assert_statements_of_the_role_are_cancelled(role_url, UPGRADE_STATEMENT_TIMEOUT, UPGRADE_LOCK_TIMEOUT)
        slow_migration_statement(database, timeout_role.name)

        # Without fuseline's settings the migration's slow statement is cancelled, and nothing stays.
        from alembic import command

        engine = sa.create_engine(role_url)
        try:
            with (
                pytest.raises(sa.exc.OperationalError, match="statement timeout"),
                engine.begin() as connection,
            ):
                command.upgrade(alembic_config(connection), "head")
            with engine.connect() as connection:
                assert schema_migrations.current_revision(connection) is None
        finally:
            engine.dispose()

        # With them: the upgrade waits for a concurrent one (the lock held here) longer than both
        # timeouts, then runs the slow statement.
        with psycopg.connect(_libpq(database), autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", [schema_migrations._UPGRADE_LOCK_KEY])
            began = time.monotonic()
            upgrading = subprocess.Popen(
                [str(SCRIPT), "db", "upgrade"],
                cwd=REPOSITORY,
                env=worker_env(url_text(role_url)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            waiting = wait_for(
                lambda: holder.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.usename = %s",
                    [timeout_role.name],
                ).fetchone()[0],  # type: ignore[index]
                30,
                "the upgrade to wait for the upgrade lock",
            )
            time.sleep(UPGRADE_LOCK_HOLD_SECONDS)
            holder.execute("SELECT pg_advisory_unlock(%s)", [schema_migrations._UPGRADE_LOCK_KEY])
        out, err = upgrading.communicate(timeout=120)
        seconds = time.monotonic() - began
        assert upgrading.returncode == 0, out + err
        assert f"to revision {HEAD_REVISION}" in out, out
        assert seconds >= UPGRADE_LOCK_HOLD_SECONDS

        # SqlBroker(..., migrate=True) as the same role, from an empty database again (the
        # version table too, so that its slow creation runs again).
        engine = sa.create_engine(role_url)
        try:
            schema_migrations.downgrade(engine, "base")
            with engine.begin() as connection:
                connection.exec_driver_sql("DROP TABLE fuseline_alembic_version")
        finally:
            engine.dispose()
        SqlBroker(role_url, migrate=True, listen=False).close()
        verified = subprocess.run(
            [str(SCRIPT), "db", "verify"],
            cwd=REPOSITORY,
            env=worker_env(url_text(role_url)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        postgres_server.drop_database(database)
    report(
        "db_upgrade_under_role_timeouts",
        {
            "statement_timeout": UPGRADE_STATEMENT_TIMEOUT,
            "lock_timeout": UPGRADE_LOCK_TIMEOUT,
            "slow_migration_statement_seconds": MIGRATION_SLOW_SECONDS,
            "upgrade_lock_held_seconds": UPGRADE_LOCK_HOLD_SECONDS,
            "sessions_waiting_for_the_lock": waiting,
            "upgrade_seconds": round(seconds, 2),
        },
    )
