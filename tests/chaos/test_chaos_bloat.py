"""Bloat (RELIABILITY item 11): a long REPEATABLE READ snapshot held while steps drain.

While a snapshot is open, the old versions of claimed and finished steps
cannot be cleaned up (no vacuum, no index hint bits), so a claim that reads
the queue in id order must step over them. On the server these tests own
(default settings, autovacuum on), worker-like loops (threads with their own
``SqlBroker``: claim, report, claim again) drain a baseline batch of
single-step instances, then another ``chaos-snapshot`` connection runs
``BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1 FROM fuseline_steps
LIMIT 1`` and keeps it open while a larger batch drains (full scale: 50,000
steps dispatched evenly over 10 minutes). Claims start from the broker's
floor (``fuseline.broker.sql.claimfloor``), not from the oldest index entry,
so they do not step over every dead entry the snapshot keeps alive. Pass:
the p99 of claim latency
(``get_step`` calls that returned a step) while the snapshot is held is
within 5 x the baseline p99; EXPLAIN of the claim statement the workers run
(the PostgreSQL hot path) uses ``ix_fuseline_steps_queued`` with the bloat
in place; no fuseline session is ``idle in transaction`` for more than 1 s
(``pg_stat_activity`` sampled every 0.1 s throughout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa

from fuseline import Status, StepReport
from fuseline.broker.base import StepAssignment
from fuseline.broker.sql import SqlBroker, pg_statements
from fuseline.workflow.step import DEFAULT_QUEUE
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase, _test_engine, migrated_postgres
from tests.chaos.history import assert_invariants
from tests.chaos.scale import BLOAT, BLOAT_MAX_P99_RATIO, FULL, pick, report
from tests.chaos.server import OwnServer
from tests.conftest import url_text

pytestmark = [pytest.mark.slow, pytest.mark.serial]

QUEUED_INDEX = "ix_fuseline_steps_queued"
DISPATCH_BATCH = 1_000
SAMPLE_SECONDS = 0.1
IDLE_IN_TRANSACTION_LIMIT_SECONDS = 1.0
PHASE_LIMIT_SECONDS = pick(180.0, 1200.0)

IDLE_IN_TRANSACTION = """
    SELECT pid, application_name, state, EXTRACT(EPOCH FROM clock_timestamp() - state_change) AS seconds
      FROM pg_stat_activity
     WHERE datname = current_database() AND application_name LIKE 'fuseline%%'
       AND state LIKE 'idle in transaction%%'
       AND clock_timestamp() - state_change > make_interval(secs => %(limit)s)
"""


@pytest.fixture
def bloat_db(own_server: OwnServer) -> Iterator[ChaosDatabase]:
    url = migrated_postgres(own_server)
    engine = _test_engine(url)
    try:
        yield ChaosDatabase(url_text(url), engine)
    finally:
        engine.dispose()
        own_server.drop_database(url)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    claimed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Loop(threading.Thread):
    """Claim, report, repeat: what a worker does, timing every claim that returned a step."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.broker = SqlBroker(url, lease_seconds=60, listen=False)
        self.worker_id = self.broker.register_worker([flows.unit.to_schema()])
        self.phase: Phase | None = None
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                phase = self.phase
                if phase is None:
                    time.sleep(0.01)
                    continue
                began = time.perf_counter()
                assignment = self.broker.get_step(self.worker_id)
                took = time.perf_counter() - began
                if assignment is None:
                    time.sleep(0.005)
                    continue
                with phase.lock:
                    phase.latencies.append(took)
                    phase.claimed += 1
                self.broker.report_step(self.worker_id, success(assignment))
        except BaseException as exc:
            self.errors.append(exc)


def success(assignment: StepAssignment) -> StepReport:
    return StepReport(
        workflow_id=assignment.workflow_id,
        instance_id=assignment.instance_id,
        step_name=assignment.step_name,
        state=Status.SUCCEEDED,
        result=assignment.payload["workflow_inputs"]["n"],
        attempt=assignment.attempt,
        version=assignment.version,
    )


class Sampler(threading.Thread):
    """Looks for fuseline sessions idle in a transaction for too long, every 0.1 s."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.samples = 0
        self.offenders: list[tuple] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                while not self.stop.wait(SAMPLE_SECONDS):
                    rows = conn.exec_driver_sql(
                        IDLE_IN_TRANSACTION, {"limit": IDLE_IN_TRANSACTION_LIMIT_SECONDS}
                    ).all()
                    self.samples += 1
                    self.offenders += [tuple(r) for r in rows]
        except BaseException as exc:
            self.errors.append(exc)


def drain(db: ChaosDatabase, loops: list[Loop], steps: int, first_n: int) -> Phase:
    """Dispatch ``steps`` instances (all at once, or at BLOAT.rate per second) and wait until claimed."""
    phase = Phase()
    for loop in loops:
        loop.phase = phase
    broker = SqlBroker(db.url, listen=False)
    schema = flows.unit.to_schema()
    began = time.monotonic()
    try:
        sent = 0
        while sent < steps:
            if BLOAT.rate is None:
                count = min(DISPATCH_BATCH, steps - sent)
            else:
                due = min(steps, int((time.monotonic() - began) * BLOAT.rate) + 1)
                count = min(DISPATCH_BATCH, due - sent)
                if count <= 0:
                    time.sleep(0.05)
                    continue
            broker.dispatch_many(schema, [{"n": first_n + sent + i} for i in range(count)])
            sent += count
        while phase.claimed < steps:
            assert time.monotonic() - began < PHASE_LIMIT_SECONDS, f"{phase.claimed} of {steps} claimed"
            errors = [e for loop in loops for e in loop.errors]
            assert not errors, repr(errors[:3])
            time.sleep(0.02)
    finally:
        broker.close()
        for loop in loops:
            loop.phase = None
    return phase


def explain_claim(engine: sa.Engine) -> str:
    schema = flows.unit.to_schema()
    params = {
        "p_worker_id": "00000000-0000-0000-0000-000000000000",
        "p_lease_seconds": 60.0,
        "p_workflow_id": schema.workflow_id,
        "p_version": schema.version,
        "p_queue": DEFAULT_QUEUE,
        "p_floor": None,  # a full scan: the plan that must use the index even from the oldest entry
        "p_dead_after": 120.0,
        "p_seen_every": 20.0,
    }
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN " + pg_statements.step_claim_one_workflow, params)
        return "\n".join(plan.scalars())


@pytest.mark.timeout(2 * PHASE_LIMIT_SECONDS + 120)
def test_claims_stay_fast_while_a_long_snapshot_holds_back_cleanup(bloat_db: ChaosDatabase) -> None:
    db = bloat_db
    loops = [Loop(db.url) for _ in range(BLOAT.claimers)]
    sampler = Sampler(db.engine)
    snapshot_engine = sa.create_engine(
        sa.engine.make_url(db.url), connect_args={"application_name": "chaos-snapshot"}
    )
    plans: list[str] = []
    try:
        for thread in (*loops, sampler):
            thread.start()
        baseline = drain(db, loops, BLOAT.baseline_steps, first_n=0)

        with snapshot_engine.connect() as snapshot:
            snapshot.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
            snapshot.exec_driver_sql("SELECT 1 FROM fuseline_steps LIMIT 1").all()
            held_since = time.monotonic()
            # EXPLAIN once halfway through the drain and once at the end, with the bloat in place.
            midway = BLOAT.held_steps / BLOAT.rate / 2 if BLOAT.rate else 2.0
            probe = threading.Timer(midway, lambda: plans.append(explain_claim(db.engine)))
            probe.start()
            held = drain(db, loops, BLOAT.held_steps, first_n=BLOAT.baseline_steps)
            probe.cancel()
            plans.append(explain_claim(db.engine))
            with db.engine.connect() as conn:
                xmin_held = conn.exec_driver_sql(
                    "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity "
                    "WHERE application_name = 'chaos-snapshot'"
                ).scalar_one()
                dead = conn.exec_driver_sql(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'fuseline_steps'"
                ).scalar_one()
            held_seconds = time.monotonic() - held_since
            snapshot.exec_driver_sql("ROLLBACK")
    finally:
        sampler.stop.set()
        for loop in loops:
            loop.stop.set()
        for thread in (*loops, sampler):
            thread.join(timeout=30)
        for loop in loops:
            loop.broker.close()
        snapshot_engine.dispose()

    assert not [e for t in (*loops, sampler) for e in t.errors], [
        e for t in (*loops, sampler) for e in t.errors
    ]
    assert xmin_held, "the snapshot did not hold back the xmin horizon: the test measured nothing"
    for plan in plans:
        assert QUEUED_INDEX in plan, plan
        assert "Seq Scan on fuseline_steps" not in plan, plan
    assert sampler.samples > 10
    assert not sampler.offenders, f"fuseline sessions idle in transaction > 1 s: {sampler.offenders[:5]}"
    assert_invariants(db.engine)
    base_p99, held_p99 = p99(baseline.latencies), p99(held.latencies)
    ratio = held_p99 / base_p99
    report(
        "bloat",
        {
            "baseline_steps": BLOAT.baseline_steps,
            "held_steps": BLOAT.held_steps,
            "snapshot_held_seconds": round(held_seconds, 1),
            "dead_tuples_at_end": dead,
            "baseline_p99_ms": round(base_p99 * 1000, 2),
            "held_p99_ms": round(held_p99 * 1000, 2),
            "p99_ratio": round(ratio, 2),
            "explains": len(plans),
            "activity_samples": sampler.samples,
            "idle_in_transaction_over_1s": len(sampler.offenders),
            "full_scale": FULL,
        },
    )
    assert ratio <= BLOAT_MAX_P99_RATIO, (
        f"claim p99 {held_p99 * 1000:.2f} ms with the snapshot held vs {base_p99 * 1000:.2f} ms baseline "
        f"({ratio:.1f}x, limit {BLOAT_MAX_P99_RATIO:g}x)"
    )
