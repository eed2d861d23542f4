"""Database restart (RELIABILITY item 7): workers ride out outages; replays and read-only databases.

- Four real workers run diamonds on a PostgreSQL server this test owns
  while instances trickle in; the server is restarted twice (``pg_ctl stop
  -m fast``, then start) and, separately, every fuseline session is
  terminated (``pg_terminate_backend``). Pass: the same worker processes
  (no new registrations) log the outage and claim again within 30 s of the
  database being back, every instance SUCCEEDED, each step accepted once,
  ``verify()`` clean.
- A report whose commit succeeded but whose reply was lost (a TCP proxy
  swallows it and drops the connection) raises DatabaseUnavailable; sent
  again it is accepted as a replay, and with a different result it raises
  ReportConflict; one success is recorded. Both report paths: the
  one-statement PostgreSQL path and the general transaction (its COMMIT's
  reply lost).
- A read-only database makes ``fuseline worker run`` exit 1 with one clear
  line and no retry loop, whether it is read-only at start or becomes
  read-only under a running worker (a failover to a replica).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fuseline import Status, StepReport
from fuseline.broker.base import StepAssignment
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances
from fuseline.broker.sql.verify import verify
from fuseline.errors import DatabaseUnavailable, ReportConflict
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase, _test_engine
from tests.chaos.history import (
    assert_each_step_accepted_once,
    assert_invariants,
    create_ledger,
    db_now,
    describe_open_steps,
    ledger_by_step,
    load_history,
    norm,
)
from tests.chaos.proxy import TcpProxy
from tests.chaos.scale import RECOVERY_LIMIT_SECONDS, RESTART, pick, report
from tests.chaos.server import OwnServer
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, wait_for, worker_env
from tests.cli.helpers import assert_one_line_error
from tests.conftest import url_text
from tests.support.databases import PostgresServer

pytestmark = pytest.mark.slow

#: Instances dispatched per second while the workers run (so there is work after every outage).
DISPATCH_RATE = 10.0
#: Seconds of each step's work.
PAUSE_SECONDS = 0.02
#: Seconds the server stays down during a restart.
DOWN_SECONDS = 1.0
OUTAGE_MARKERS = (
    "database unavailable",
    "heartbeat failed",
    "listening connection lost",
    "waiting for work failed",
)


def fuseline(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=REPOSITORY,
        env=worker_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Dispatcher(threading.Thread):
    """Dispatches diamonds at a steady rate, waiting out outages; each attempt gets a new ``n``."""

    def __init__(self, url: str, total: int) -> None:
        super().__init__(daemon=True)
        self.url, self.total = url, total
        self.dispatched = 0
        self.failures = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        broker: SqlBroker | None = None
        began = time.monotonic()
        try:
            while self.dispatched < self.total and not self.stop.is_set():
                self.stop.wait(max(0.0, began + self.dispatched / DISPATCH_RATE - time.monotonic()))
                try:
                    if broker is None:
                        broker = SqlBroker(self.url, listen=False)
                    flows.diamond.dispatch(broker, {"n": n, "pause": PAUSE_SECONDS})
                    self.dispatched += 1
                except DatabaseUnavailable:
                    self.failures += 1
                    if broker is not None:
                        broker.close()
                        broker = None
                    self.stop.wait(0.2)
                n += 1
        except BaseException as exc:
            self.error = exc
        finally:
            if broker is not None:
                broker.close()


@pytest.fixture
def restart_db(own_server: OwnServer) -> Iterator[ChaosDatabase]:
    url = own_server.create_database("fuseline_restart")
    text = url_text(url)
    upgraded = fuseline(text, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    engine = _test_engine(url)
    create_ledger(engine)
    try:
        yield ChaosDatabase(text, engine)
    finally:
        engine.dispose()
        if not own_server.running:
            own_server.start_server()
        own_server.drop_database(url)


def first_claims_after(db: ChaosDatabase, since: datetime, worker_ids: list[str]) -> dict[str, float]:
    """Seconds from ``since`` to each worker's first claim after it (workers without one are left out)."""
    found: dict[str, float] = {}
    for event in load_history(db.engine, ledger=False).of("claimed"):
        if event.at > since and event.worker_id in worker_ids and event.worker_id not in found:
            found[event.worker_id] = (event.at - since).total_seconds()  # type: ignore[index]
    return found


@pytest.mark.timeout(pick(300, 900))
def test_workers_recover_from_restarts_and_terminated_sessions_without_restarting(
    own_server: OwnServer, restart_db: ChaosDatabase, tmp_path: Path
) -> None:
    db, cfg = restart_db, RESTART
    span = cfg.instances / DISPATCH_RATE  # seconds of dispatching
    options = ("--lease-seconds", str(cfg.lease_seconds))
    dispatcher = Dispatcher(db.url, cfg.instances)
    disruptions: list[tuple[str, datetime]] = []
    recoveries: dict[str, float] = {}
    terminated = 0
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:diamond", *options) as fleet:
        started = [fleet.start() for _ in range(cfg.workers)]
        for worker in started:
            worker.wait_for_log("started (pid")
        history = load_history(db.engine, ledger=False)
        worker_ids = [w for w, pid in history.worker_pids.items() if pid in {x.pid for x in started}]
        assert len(worker_ids) == cfg.workers
        dispatcher.start()
        began = time.monotonic()
        try:
            for number, (kind, at_fraction) in enumerate(
                (("restart", 0.2), ("restart", 0.45), ("terminate", 0.7)), start=1
            ):
                time.sleep(max(0.0, began + at_fraction * span - time.monotonic()))
                if kind == "restart":
                    own_server.restart(down_seconds=DOWN_SECONDS)
                else:
                    with db.engine.connect() as conn:
                        terminated = conn.exec_driver_sql(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'fuseline%%' AND pid <> pg_backend_pid()"
                        ).scalar_one()
                    assert terminated >= 2 * cfg.workers, f"only {terminated} fuseline sessions terminated"
                back_at = db_now(db.engine)
                disruptions.append((kind, back_at))
                name = f"{number}_{kind}"
                seen = wait_for(
                    lambda back_at=back_at: (
                        found
                        if len(found := first_claims_after(db, back_at, worker_ids)) == cfg.workers
                        else None
                    ),
                    RECOVERY_LIMIT_SECONDS,
                    f"every worker to claim again after {kind} #{number}",
                    interval=0.2,
                )
                recoveries[name] = max(seen.values())
                broken = fleet.unexpected_exits()
                assert not broken, fleet.logs(broken)
            dispatcher.join(timeout=span * 3 + 60)
            assert not dispatcher.is_alive(), "the dispatcher did not finish"
            assert dispatcher.error is None, repr(dispatcher.error)

            def drained() -> bool:
                with db.engine.connect() as conn:
                    return not conn.execute(
                        sa.select(sa.func.count())
                        .select_from(instances)
                        .where(instances.c.status == "RUNNING")
                    ).scalar_one()

            try:
                wait_for(drained, pick(90, 300), "the workers to finish every instance", interval=0.2)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{describe_open_steps(db.engine)}\n{fleet.logs()}") from None
        finally:
            dispatcher.stop.set()
        assert [w.alive() for w in started] == [True] * cfg.workers, fleet.logs()
        assert len(fleet.started) == cfg.workers
        quiet = [w for w in started if not any(marker in w.stderr for marker in OUTAGE_MARKERS)]
        assert not quiet, f"workers that did not log the outage:\n{fleet.logs(quiet)}"
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        assert not [w for w in started if "Traceback" in w.stderr], fleet.logs()
        reconnected = sum(w.stderr.count("database reachable again") for w in started)

    history = load_history(db.engine)
    assert set(history.worker_pids.values()) == {w.pid for w in started}, "a worker registered again"
    with db.engine.connect() as conn:
        inputs = dict(conn.execute(sa.select(instances.c.id, instances.c.inputs)).all())
    ids_by_n = {json.loads(text)["n"]: norm(instance_id) for instance_id, text in inputs.items()}
    assert len(ids_by_n) >= dispatcher.dispatched  # a dispatch whose reply was lost may add one
    for n, instance_id in ids_by_n.items():
        status, result = history.instance_states[instance_id]  # type: ignore[index]
        assert (status, result) == ("SUCCEEDED", str(flows.diamond_result(n))), (instance_id, status, result)
    ids = list(ids_by_n.values())
    assert_each_step_accepted_once(history, ids, flows.DIAMOND_STEPS)  # type: ignore[arg-type]
    assert_invariants(db.engine)
    executions = ledger_by_step(history, ids_by_n, flows.DIAMOND_STEPS)  # type: ignore[arg-type]
    worst = max(recoveries.values())
    assert worst <= RECOVERY_LIMIT_SECONDS
    report(
        "db_restart",
        {
            "workers": cfg.workers,
            "instances": len(ids),
            "lease_seconds": cfg.lease_seconds,
            "disruptions": [kind for kind, _ in disruptions],
            "sessions_terminated": terminated,
            "recovery_seconds": {k: round(v, 2) for k, v in recoveries.items()},
            "max_recovery_seconds": round(worst, 2),
            "reconnect_log_lines": reconnected,
            "dispatch_failures": dispatcher.failures,
            "reruns": sum(len(rows) - 1 for rows in executions.values()),
        },
    )


# -- a report replayed after its reply was lost ------------------------------------------------------


def success(assignment: StepAssignment, result: object) -> StepReport:
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=result,
        attempt=assignment.attempt,
        version=assignment.version,
    )


@pytest.mark.parametrize("path", ["one-statement", "transaction"])
def test_report_replayed_after_its_reply_was_lost_is_accepted_once(
    path: str, chaos_postgres: ChaosDatabase
) -> None:
    db = chaos_postgres
    with TcpProxy(make_url(db.url)) as proxy:
        broker = SqlBroker(proxy.url_for(make_url(db.url)), listen=False)
        try:
            if path == "one-statement":
                # A single step ends its instance: its success is one autocommit statement.
                workflow, step, trigger = flows.unit, "unit", None
            else:
                # B of an AND diamond feeds a join: the general path (one transaction).
                # Lose the reply to its COMMIT.
                workflow, step, trigger = flows.join_and, "b", b"COMMIT"
            worker = broker.register_worker([workflow.to_schema()])
            instance_id = workflow.dispatch(broker, {"n": 7})
            assignment = broker.get_step(worker)
            while assignment is not None and assignment.step_name != step:
                broker.report_step(worker, success(assignment, 7))
                assignment = broker.get_step(worker)
            assert assignment is not None and assignment.instance_id == instance_id

            proxy.lose_next_reply(trigger)
            with pytest.raises(DatabaseUnavailable):
                broker.report_step(worker, success(assignment, 14))
            assert proxy.replies_lost == 1
            with db.engine.connect() as conn:
                state = conn.exec_driver_sql(
                    "SELECT state, result FROM fuseline_steps WHERE instance_id = %(i)s AND name = %(s)s",
                    {"i": instance_id, "s": step},
                ).one()
            assert tuple(state) == ("SUCCEEDED", "14"), "the report did not commit before its reply was lost"

            broker.report_step(worker, success(assignment, 14))  # the replay: accepted, changes nothing
            with pytest.raises(ReportConflict):
                broker.report_step(worker, success(assignment, 15))
        finally:
            broker.close()
    history = load_history(db.engine, ledger=False)
    accepted = [(e.step, e.attempt) for e in history.of("succeeded") if e.step == step]
    assert accepted == [(step, 1)], accepted
    assert [str(v) for v in verify(db.engine)] == []


# -- a read-only database -------------------------------------------------------------------------------


@pytest.fixture
def writable_then_read_only(postgres_server: PostgresServer) -> Iterator[tuple[str, sa.Engine]]:
    url = postgres_server.create_database("fuseline_read_only")
    text = url_text(url)
    upgraded = fuseline(text, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    admin = sa.create_engine(postgres_server.admin_url, isolation_level="AUTOCOMMIT")
    try:
        yield text, admin
    finally:
        admin.dispose()
        postgres_server.drop_database(url)


def make_read_only(admin: sa.Engine, url: str, terminate: bool) -> None:
    name = make_url(url).database
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        if terminate:  # sessions keep the setting they started with: new ones are read-only
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(d)s "
                "AND application_name LIKE 'fuseline%%'",
                {"d": name},
            )


def test_read_only_database_stops_the_worker_with_one_clear_line(
    writable_then_read_only: tuple[str, sa.Engine],
) -> None:
    url, admin = writable_then_read_only
    make_read_only(admin, url, terminate=False)
    began = time.monotonic()
    run = fuseline(url, "worker", "run", "tests.chaos.flows:diamond", "--lease-seconds", "3", timeout=30)
    seconds = time.monotonic() - began
    line = assert_one_line_error(run, 1, "read-only transaction")
    assert "retrying" not in run.stderr
    report("read_only_at_start", {"exit_code": run.returncode, "seconds": round(seconds, 2), "message": line})


def test_database_turning_read_only_stops_a_running_worker(
    writable_then_read_only: tuple[str, sa.Engine], tmp_path: Path
) -> None:
    url, admin = writable_then_read_only
    with Workers(tmp_path / "workers", url, "tests.chaos.flows:diamond", "--lease-seconds", "3") as fleet:
        worker = fleet.start()
        worker.wait_for_log("started (pid")
        make_read_only(admin, url, terminate=True)
        try:
            code = worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker kept running on a read-only database:\n{worker.stderr}")
        log = worker.stderr
    assert code == 1, log
    assert "Traceback" not in log, log
    stopped = [line for line in log.splitlines() if " ERROR " in line]
    assert len(stopped) == 1 and "read-only transaction" in stopped[0], log
    retried = [line for line in log.splitlines() if "retrying" in line and "read-only" in line]
    assert not retried, f"the worker retried a permanent error:\n{log}"
    report("read_only_while_running", {"exit_code": code, "error": stopped[0].split(" ERROR ", 1)[1]})


# -- a claim whose reply was lost ----------------------------------------------------------------------


#: Text only the claim statements send (the first time, before the server prepares them).
CLAIM_TEXT = b"claimed AS ("
#: Text only the claim that follows a report in the same round trip sends.
CLAIM_AFTER_REPORT_TEXT = b"AND r.reported_by = CAST("


@pytest.mark.parametrize(
    ("lost", "trigger", "orphan"),
    [("claim", CLAIM_TEXT, 0), ("report-and-claim", CLAIM_AFTER_REPORT_TEXT, 1)],
    ids=["claim", "report-and-claim"],
)
def test_claim_whose_reply_was_lost_is_not_held_forever(
    lost: str, trigger: bytes, orphan: int, chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    """A claim commits but its reply is lost (the connection drops): the worker never learns it
    holds the step and claims another. That step must still run: its lease must expire (the
    worker's heartbeats must not renew it) so another claim takes it.

    ``claim``: the worker's very first claim; ``report-and-claim``: the claim that travels with
    the report of the first step (the report commits too, and is replayed)."""
    db, lease = chaos_postgres, 2.0
    broker = SqlBroker(db.url)
    try:
        ids = broker.dispatch_many(flows.unit.to_schema(), [{"n": n} for n in range(3)])
    finally:
        broker.close()
    with (
        TcpProxy(make_url(db.url)) as proxy,
        Workers(
            tmp_path / "workers", db.url, "tests.chaos.flows:unit", "--lease-seconds", str(lease)
        ) as fleet,
    ):
        proxy.lose_next_reply(trigger)
        worker = fleet.start(proxy.url_for(make_url(db.url)).render_as_string(hide_password=False))
        worker.wait_for_log("claim a step failed" if lost == "claim" else "report failed")
        assert proxy.replies_lost == 1
        lost_at = time.monotonic()

        def finished() -> bool:
            states = load_history(db.engine, ledger=False).instance_states
            return all(states[i][0] == "SUCCEEDED" for i in ids)

        try:
            wait_for(finished, 3 * lease + 5, "both instances to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{describe_open_steps(db.engine)}\n{fleet.logs()}") from None
        recovered = time.monotonic() - lost_at
    history = load_history(db.engine, ledger=False)
    orphaned = ids[orphan]
    claims = [(e.attempt, e.worker_id) for e in history.of("claimed") if e.instance_id == orphaned]
    expired = [(e.attempt, e.worker_id) for e in history.of("lease_expired") if e.instance_id == orphaned]
    assert [attempt for attempt, _ in claims] == [1, 2], claims
    assert expired == claims[:1], expired
    assert len(history.of("succeeded")) == len(ids)
    assert_invariants(db.engine)
    report(
        f"lost_{lost.replace('-', '_')}_reply",
        {"lease_seconds": lease, "orphan_claimed_again_after_seconds": round(recovered, 2)},
    )
