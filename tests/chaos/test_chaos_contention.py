"""Claim contention (RELIABILITY item 6): many claimers draining one queue at once.

Claimers are threads, each with its own ``SqlBroker`` (its own connection
pools) and worker id, released together; each claims, reports success
(``report_and_claim``, the worker loop's call) and claims again until the
queue is empty. PostgreSQL runs on the server these tests own (32 claimers
need more connections than the shared server has to spare). Pass: every
step claimed exactly once, on its first attempt, and accepted once; no
exception reaches a claimer (a deadlock would surface as one, as would
"database is locked" on SQLite); PostgreSQL's deadlock counter for the
database is unchanged and its log has no "deadlock detected".
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from fuseline import Status, StepReport
from fuseline.broker.base import StepAssignment
from fuseline.broker.sql import SqlBroker
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase, _test_engine, migrated_postgres
from tests.chaos.history import assert_invariants, load_history
from tests.chaos.scale import CONTENTION_POSTGRES, CONTENTION_SQLITE, Contention, pick, report
from tests.chaos.server import OwnServer
from tests.conftest import url_text

pytestmark = pytest.mark.slow

DISPATCH_BATCH = 1_000
#: A claimer stops when the queue was empty this many times in a row and every step was claimed,
#: or when it found nothing for this long (then the test tells what is missing).
EMPTY_POLLS = 3
GIVE_UP_SECONDS = 5.0


class Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.claimed = 0

    def add(self) -> None:
        with self._lock:
            self.claimed += 1


@pytest.fixture
def own_postgres(own_server: OwnServer) -> Iterator[ChaosDatabase]:
    url = migrated_postgres(own_server)
    engine = _test_engine(url)
    try:
        yield ChaosDatabase(url_text(url), engine)
    finally:
        engine.dispose()
        own_server.drop_database(url)


def done(assignment: StepAssignment) -> StepReport:
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=assignment.payload["workflow_inputs"]["n"],
        attempt=assignment.attempt,
        version=assignment.version,
    )


class Claimer(threading.Thread):
    def __init__(self, url: str, start: threading.Barrier, total: int, progress: Progress) -> None:
        super().__init__(daemon=True)
        self.broker = SqlBroker(url, lease_seconds=600, listen=False)
        self.worker_id = self.broker.register_worker([flows.unit.to_schema()])
        self.start_gate, self.total, self.progress = start, total, progress
        self.claims: list[tuple[str, str, int]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            self.start_gate.wait(timeout=60)
            empty, idle_since = 0, time.monotonic()
            assignment = self.broker.get_step(self.worker_id)
            while True:
                if assignment is None:
                    empty += 1
                    finished = empty >= EMPTY_POLLS and self.progress.claimed >= self.total
                    if finished or time.monotonic() - idle_since > GIVE_UP_SECONDS:
                        return
                    time.sleep(0.01)
                    assignment = self.broker.get_step(self.worker_id)
                    continue
                empty, idle_since = 0, time.monotonic()
                self.claims.append((assignment.instance_id, assignment.step_name, assignment.attempt))
                self.progress.add()
                assignment = self.broker.report_and_claim(self.worker_id, done(assignment))
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.broker.close()


def deadlocks(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return conn.exec_driver_sql(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).scalar_one()


def drain(db: ChaosDatabase, cfg: Contention) -> tuple[list[Claimer], float]:
    broker = SqlBroker(db.url)
    try:
        ids: list[str] = []
        for start in range(0, cfg.steps, DISPATCH_BATCH):
            count = min(DISPATCH_BATCH, cfg.steps - start)
            ids += broker.dispatch_many(flows.unit.to_schema(), [{"n": start + i} for i in range(count)])
    finally:
        broker.close()
    gate = threading.Barrier(cfg.claimers + 1)
    progress = Progress()
    claimers = [Claimer(db.url, gate, cfg.steps, progress) for _ in range(cfg.claimers)]
    try:
        for claimer in claimers:
            claimer.start()
        gate.wait(timeout=60)
        began = time.perf_counter()
        for claimer in claimers:
            claimer.join(timeout=pick(240, 900))
            assert not claimer.is_alive(), "a claimer did not finish in time"
        seconds = time.perf_counter() - began
    finally:
        for claimer in claimers:
            claimer.close()
    errors = [e for c in claimers for e in c.errors]
    assert not errors, f"{len(errors)} errors reached claimers, e.g. {errors[:3]!r}"
    claims = Counter(claim[:2] for c in claimers for claim in c.claims)
    twice = [key for key, count in claims.items() if count > 1]
    assert not twice, f"steps claimed more than once: {twice[:10]}"
    assert len(claims) == cfg.steps, f"{len(claims)} of {cfg.steps} steps claimed"
    assert {claim[2] for c in claimers for claim in c.claims} == {1}, "a step needed a second attempt"
    history = load_history(db.engine, ledger=False)
    assert len(history.of("claimed")) == cfg.steps
    assert len(history.of("succeeded")) == cfg.steps
    assert {status for status, _ in history.instance_states.values()} == {"SUCCEEDED"}
    assert_invariants(db.engine)
    return claimers, seconds


def test_claimers_on_postgresql_claim_every_step_once_without_deadlocks(
    own_postgres: ChaosDatabase, own_server: OwnServer
) -> None:
    cfg = CONTENTION_POSTGRES
    deadlocks_before = deadlocks(own_postgres.engine)
    log_before = len(own_server.log_text())
    claimers, seconds = drain(own_postgres, cfg)
    new_deadlocks = deadlocks(own_postgres.engine) - deadlocks_before
    assert new_deadlocks == 0, f"{new_deadlocks} deadlocks (40P01)"
    assert "deadlock detected" not in own_server.log_text()[log_before:]
    per_claimer = sorted(len(c.claims) for c in claimers)
    report(
        "contention_postgres",
        {
            "claimers": cfg.claimers,
            "steps": cfg.steps,
            "claims": sum(per_claimer),
            "claimed_twice": 0,
            "deadlocks": new_deadlocks,
            "seconds": round(seconds, 2),
            "steps_per_second": round(cfg.steps / seconds, 1),
            "claims_per_claimer_min_max": [per_claimer[0], per_claimer[-1]],
        },
    )


def test_claimers_on_sqlite_claim_every_step_once_without_lock_errors(chaos_sqlite: ChaosDatabase) -> None:
    cfg = CONTENTION_SQLITE
    claimers, seconds = drain(chaos_sqlite, cfg)
    report(
        "contention_sqlite",
        {
            "claimers": cfg.claimers,
            "steps": cfg.steps,
            "claims": sum(len(c.claims) for c in claimers),
            "database_is_locked_errors": 0,
            "seconds": round(seconds, 2),
            "steps_per_second": round(cfg.steps / seconds, 1),
        },
    )
