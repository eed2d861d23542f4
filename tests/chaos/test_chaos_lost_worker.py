"""A worker that stops answering while it holds a step: hung (item 4) or partitioned (item 8).

Both run two real workers on the ``hold`` workflow: the first claims the
step, whose first execution waits for a gate file; the second starts only
then. The first worker is then SIGSTOPped for 3 x lease (hung), or cut off
from PostgreSQL by a TCP proxy for 2 x lease (partition). Pass: the other
worker re-runs the step (its second execution returns at once) and its
success is the one accepted, exactly once; the first worker's late result
is refused.

fuseline does not interrupt a step whose lease was lost: the worker lets it
finish and drops its result (its heartbeat saw the lease gone), or reports
it and the broker rejects it (LeaseLost). So the matrix's "abandons / stops
its step within one renewal interval / TTL" is checked as "its result is
dropped or refused": the hung worker is released one renewal interval (plus
a margin) after SIGCONT and must already know its lease was lost; the
partitioned worker finishes while still cut off and its report is rejected
once the network heals.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from fuseline.broker.sql import SqlBroker
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import History, assert_invariants, db_now, load_history
from tests.chaos.proxy import TcpProxy
from tests.chaos.scale import HUNG_LEASE_SECONDS, PARTITION_LEASE_SECONDS, report
from tests.chaos.workers import Worker, Workers, wait_for

pytestmark = pytest.mark.slow

POLL_SECONDS = 0.1
#: Time for the replacement to notice, run and report, on top of the lease and reaper interval.
MARGIN_SECONDS = 0.75


def reap_interval(lease: float) -> float:
    """How often a broker reaps expired leases (``SqlBroker._reap_interval``)."""
    return max(0.05, min(lease / 4, 5.0))


def worker_id_of(db: ChaosDatabase, worker: Worker) -> str:
    def registered() -> str | None:
        history = load_history(db.engine, ledger=False)
        return next((w for w, pid in history.worker_pids.items() if pid == worker.pid), None)

    return wait_for(registered, 30, f"worker {worker.pid} to register")


def claimed_by(db: ChaosDatabase, worker_id: str) -> bool:
    return any(e.worker_id == worker_id for e in load_history(db.engine, ledger=False).of("claimed"))


def successes(db: ChaosDatabase) -> list:
    return load_history(db.engine, ledger=False).of("succeeded")


def start_holder(
    fleet: Workers, db: ChaosDatabase, gate: Path, url: str | None = None
) -> tuple[Worker, str, str]:
    """The first worker, holding the only step: (worker, its id, the instance id)."""
    holder = fleet.start(url)
    holder.wait_for_log("started (pid")
    holder_id = worker_id_of(db, holder)
    broker = SqlBroker(db.url)
    try:
        instance_id = flows.hold.dispatch(broker, {"n": 1, "gate": str(gate)})
    finally:
        broker.close()
    wait_for(lambda: claimed_by(db, holder_id), 30, "the first worker to claim the step")
    return holder, holder_id, instance_id


IDLE_IN_TRANSACTION = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE 'fuseline%%' AND state LIKE 'idle in transaction%%'"
)


def idle_in_transaction(db: ChaosDatabase) -> int:
    """How many fuseline sessions are idle in transaction (a new connection: a fresh snapshot)."""
    with db.engine.connect() as conn:
        return int(conn.exec_driver_sql(IDLE_IN_TRANSACTION).scalar_one())


def stop_outside_a_transaction(db: ChaosDatabase, worker: Worker) -> None:
    """SIGSTOP the worker, but not in the middle of a transaction (its heartbeat's, the only one
    it could have open while its step waits): a worker frozen inside one keeps its row locks,
    which :func:`test_worker_partitioned_inside_a_transaction_loses_its_step` shows separately."""
    for _ in range(20):
        worker.signal(signal.SIGSTOP)
        time.sleep(0.05)
        with db.engine.connect() as conn:
            if conn.exec_driver_sql(IDLE_IN_TRANSACTION).scalar_one() == 0:
                return
        worker.signal(signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError("the worker was always inside a transaction")


def check_one_accepted_success(
    db: ChaosDatabase, history: History, instance_id: str, holder: Worker, holder_id: str, other: Worker
) -> None:
    (accepted,) = history.of("succeeded")
    assert (accepted.step, accepted.attempt) == ("hold", 2), accepted
    assert history.worker_pids[accepted.worker_id] == other.pid  # type: ignore[index]
    status, result = history.instance_states[instance_id]
    assert status == "SUCCEEDED"
    assert result is not None and f'"pid":{other.pid}' in result.replace(" ", ""), result
    expired = [(e.attempt, e.worker_id) for e in history.of("lease_expired")]
    assert expired == [(1, holder_id)], expired
    runs = sorted((r.attempt, r.pid) for r in history.ledger)
    assert runs == [(1, holder.pid), (2, other.pid)], runs
    assert_invariants(db.engine)


def test_hung_worker_loses_its_step_to_another_and_drops_its_result(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db, lease = chaos_postgres, HUNG_LEASE_SECONDS
    gate = tmp_path / "gate"
    options = ("--lease-seconds", str(lease), "--poll-interval", str(POLL_SECONDS))
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:hold", *options) as fleet:
        hung, hung_id, instance_id = start_holder(fleet, db, gate)
        other = fleet.start()
        other.wait_for_log("started (pid")

        stop_outside_a_transaction(db, hung)
        stopped = time.monotonic()
        stopped_at = db_now(db.engine)
        try:
            (done,) = wait_for(lambda: successes(db), 3 * lease, "another worker to finish the step")
            time.sleep(max(0.0, stopped + 3 * lease - time.monotonic()))
        finally:
            hung.signal(signal.SIGCONT)
        # One renewal interval after SIGCONT (plus a margin), the step ends: by then the
        # heartbeat must have found the lease gone, so the result is dropped, not reported.
        time.sleep(lease / 3 + 0.5)
        gate.touch()
        hung.wait_for_log("dropping the result of step hold", timeout=15)
        assert hung.alive(), fleet.logs()
        assert "Traceback" not in hung.stderr + other.stderr, fleet.logs()
        replaced_after = (done.at - stopped_at).total_seconds()

    history = load_history(db.engine)
    check_one_accepted_success(db, history, instance_id, hung, hung_id, other)
    limit = lease + reap_interval(lease)
    assert replaced_after <= limit + MARGIN_SECONDS, (
        f"the step was finished elsewhere {replaced_after:.2f} s after the worker hung "
        f"(lease + reaper interval = {limit:g} s, margin {MARGIN_SECONDS:g} s)"
    )
    report(
        "hung_worker",
        {
            "lease_seconds": lease,
            "stopped_seconds": 3 * lease,
            "finished_elsewhere_after_seconds": round(replaced_after, 3),
            "limit_seconds": limit,
        },
    )


def test_partitioned_worker_loses_its_step_and_its_late_report_is_rejected(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db, lease = chaos_postgres, PARTITION_LEASE_SECONDS
    gate = tmp_path / "gate"
    options = ("--lease-seconds", str(lease), "--poll-interval", str(POLL_SECONDS))
    with (
        TcpProxy(make_url(db.url)) as proxy,
        Workers(tmp_path / "workers", db.url, "tests.chaos.flows:hold", *options) as fleet,
    ):
        behind_proxy = proxy.url_for(make_url(db.url)).render_as_string(hide_password=False)
        cut_off, cut_off_id, instance_id = start_holder(fleet, db, gate, url=behind_proxy)
        other = fleet.start()
        other.wait_for_log("started (pid")

        proxy.cut()
        cut = time.monotonic()
        cut_at = db_now(db.engine)
        try:
            (done,) = wait_for(lambda: successes(db), 2 * lease, "another worker to re-run the step")
            assert time.monotonic() - cut < 2 * lease, "the step was re-run only after the partition"
            gate.touch()  # the cut-off worker's step ends now; its report cannot get through
            cut_off.wait_for_log("database unavailable (report failed", timeout=2 * lease)
            assert "heartbeat failed" in cut_off.stderr
            time.sleep(max(0.0, cut + 2 * lease - time.monotonic()))
        finally:
            proxy.heal()
        healed = time.monotonic()
        cut_off.wait_for_log("report for step 'hold' of instance", timeout=20)
        rejected_after = time.monotonic() - healed
        assert "rejected: the step is SUCCEEDED" in cut_off.stderr, cut_off.tail()
        assert "dropping the result" not in cut_off.stderr
        assert cut_off.alive() and other.alive(), fleet.logs()
        assert "Traceback" not in cut_off.stderr + other.stderr, fleet.logs()
        rerun_after = (done.at - cut_at).total_seconds()
        refused = proxy.refused

    history = load_history(db.engine)
    check_one_accepted_success(db, history, instance_id, cut_off, cut_off_id, other)
    assert refused > 0, "the cut-off worker never tried to reconnect"
    report(
        "partition",
        {
            "lease_seconds": lease,
            "cut_seconds": 2 * lease,
            "rerun_elsewhere_after_seconds": round(rerun_after, 3),
            "late_report_rejected_after_heal_seconds": round(rejected_after, 3),
            "connections_refused_while_cut": refused,
        },
    )


def test_worker_partitioned_inside_a_transaction_loses_its_step(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    """A silent partition (a blackhole, not resets) that starts inside the worker's heartbeat
    transaction: the step must still be re-run elsewhere within 2 x lease, as in the partition
    test above, and the late result refused."""
    db, lease = chaos_postgres, PARTITION_LEASE_SECONDS
    gate = tmp_path / "gate"
    options = ("--lease-seconds", str(lease), "--poll-interval", str(POLL_SECONDS))
    with (
        TcpProxy(make_url(db.url)) as proxy,
        Workers(tmp_path / "workers", db.url, "tests.chaos.flows:hold", *options) as fleet,
    ):
        behind_proxy = proxy.url_for(make_url(db.url)).render_as_string(hide_password=False)
        cut_off, _, _ = start_holder(fleet, db, gate, url=behind_proxy)
        other = fleet.start()
        other.wait_for_log("started (pid")

        proxy.freeze_on(b"COMMIT")  # the next heartbeat's COMMIT never arrives, nor anything after
        assert proxy.frozen.wait(3 * lease), "the worker sent no heartbeat"
        # pg_stat_activity lags the session under load, and another session may pass through
        # "idle in transaction" for a moment: poll until exactly the frozen one is left.
        wait_for(
            lambda: idle_in_transaction(db) == 1,
            10,
            "exactly one fuseline session idle in transaction (the frozen heartbeat)",
        )
        try:
            wait_for(lambda: successes(db), 2 * lease, "another worker to re-run the step")
        finally:
            gate.touch()
            proxy.heal()
        cut_off.wait_for_log("report for step 'hold' of instance", timeout=30)
    history = load_history(db.engine, ledger=False)
    assert [(e.attempt, history.worker_pids[e.worker_id]) for e in history.of("succeeded")] == [  # type: ignore[index]
        (2, other.pid)
    ]
