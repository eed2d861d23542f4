"""A slow, lossy network between the workers and PostgreSQL (issue 16, case 5; RELIABILITY item 25).

This container has no ``netem`` queueing discipline (``tc qdisc ... netem`` answers "unknown
qdisc"), so the link is :class:`tests.chaos.proxy.TcpProxy` with a :class:`LinkShape`: every
chunk waits 25 ms in each direction (a 50 ms round trip), in order, and 1 % of the chunks are
"lost": TCP never loses bytes, so a loss shows as the retransmission stall it causes, 250 ms
during which that direction of the connection stands still.

The same number of diamonds is drained twice by real ``fuseline worker run`` processes started
before the dispatch: once with the workers connected direct, once with their database URL
pointing at the slow link (the ledger, ``CHAOS_LEDGER_URL``, stays direct, so it adds nothing
to the link). Pass:

- every instance SUCCEEDED with the right result; each step accepted exactly once; nothing
  left to run; ``fuseline db verify`` (itself through the slow link) is clean;
- no worker exited on its own or logged a traceback, and every one stops gracefully;
- no lease expired: a lease of a few seconds renewed every third of it outlives 50 ms round
  trips and 250 ms stalls;
- throughput falls no more than the round trips explain: the slow drain takes at most the
  direct drain plus twice (steps x round trips per step x round trip / workers) plus every
  stall, where the round trips per step are counted by the proxy (client turns: a request
  sent after the server spoke) and include heartbeats and polls, so the bound is generous.

The count is well above the one round trip of the hot path: only A and D of a diamond take
the one-statement report-and-claim; B and C feed an AND join, so their reports take the
general path, a transaction of one statement per round trip (about eight in all).

Being a comparison of two timings it is ``serial``: other tests' load must not skew one drain.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import assert_each_step_accepted_once, assert_invariants, load_history
from tests.chaos.proxy import LinkShape, TcpProxy
from tests.chaos.scale import FULL, SLOW_NETWORK, pick, report
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.serial]

#: Each drain must end within this many seconds.
DRAIN_LIMIT_SECONDS = pick(60.0, 600.0)
#: Seconds of fixed slack in the throughput bound (the last poll, the final steps' tail).
BOUND_SLACK_SECONDS = 1.0
#: What the worker logs once it is registered and about to claim.
STARTED = "started (pid"


def running_instances(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(instances).where(instances.c.status == "RUNNING")
        ).scalar_one()


def dispatch(url: str, inputs: list[dict]) -> list[str]:
    broker = SqlBroker(url)
    try:
        return broker.dispatch_many(flows.diamond.to_schema(), inputs)
    finally:
        broker.close()


class Drain(NamedTuple):
    """One timed drain: from the dispatch until no instance runs."""

    seconds: float
    #: From the first worker's start until every one logged that it started.
    startup_seconds: float
    ids: list[str]
    #: Every worker's stderr, joined.
    logs: str


def drain(
    db: ChaosDatabase,
    folder: Path,
    worker_url: str,
    first_n: int,
    before_dispatch: Callable[[], None] | None = None,
) -> Drain:
    """Start the workers on ``worker_url``, wait until they all run, dispatch the instances
    (direct) and time until none is running."""
    cfg = SLOW_NETWORK
    options = ("--lease-seconds", str(cfg.lease_seconds))
    with Workers(folder, worker_url, "tests.chaos.flows:diamond", *options) as fleet:
        starting = time.monotonic()
        for _ in range(cfg.workers):
            fleet.start()
        for worker in fleet.started:
            worker.wait_for_log(STARTED, timeout=60)
        startup_seconds = time.monotonic() - starting
        if before_dispatch is not None:
            before_dispatch()
        began = time.monotonic()
        ids = dispatch(db.url, [{"n": n} for n in range(first_n, first_n + cfg.instances)])
        while running_instances(db.engine):
            assert time.monotonic() - began < DRAIN_LIMIT_SECONDS, (
                f"not drained within {DRAIN_LIMIT_SECONDS:g} s:\n{fleet.logs(fleet.alive())}"
            )
            broken = fleet.unexpected_exits()
            assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
            time.sleep(0.02)
        seconds = time.monotonic() - began
        broken = fleet.unexpected_exits()
        assert not broken, f"a worker exited on its own:\n{fleet.logs(broken)}"
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        tracebacks = [w for w in fleet.started if "Traceback" in w.stderr]
        assert not tracebacks, fleet.logs(tracebacks)
        logs = "\n".join(w.stderr for w in fleet.started)
    return Drain(seconds, startup_seconds, ids, logs)


@pytest.mark.timeout(2 * DRAIN_LIMIT_SECONDS + 120)
def test_workers_on_a_slow_lossy_link_finish_everything_once_and_lose_only_round_trips(
    chaos_postgres: ChaosDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = SLOW_NETWORK
    db = chaos_postgres
    monkeypatch.setenv(flows.LEDGER_ENV, db.url)  # the ledger goes direct, whatever the workers use
    seed = random.randrange(1 << 30)
    shape = LinkShape(cfg.delay_seconds, loss=cfg.loss, stall_seconds=cfg.stall_seconds, seed=seed)

    direct = drain(db, tmp_path / "direct", db.url, 0)

    with TcpProxy(make_url(db.url), shape) as link:
        slow_url = link.url_for(make_url(db.url)).render_as_string(hide_password=False)
        counted: dict[str, int] = {}

        def snapshot() -> None:
            counted.update(turns=link.turns, chunks=link.chunks, stalls=link.stalls)

        slow = drain(db, tmp_path / "slow", slow_url, cfg.instances, before_dispatch=snapshot)
        turns = link.turns - counted["turns"]
        chunks = link.chunks - counted["chunks"]
        stalls = link.stalls - counted["stalls"]
        connections = link.connections
        verifying = time.monotonic()
        cli = subprocess.run(
            [str(SCRIPT), "db", "verify"],
            cwd=REPOSITORY,
            env=worker_env(slow_url),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        verify_seconds = time.monotonic() - verifying
    assert cli.returncode == 0 and "every invariant holds" in cli.stdout, cli.stdout + cli.stderr

    ids = direct.ids + slow.ids
    history = load_history(db.engine)
    for n, instance_id in enumerate(ids):
        status, result = history.instance_states[instance_id]
        assert (status, result) == ("SUCCEEDED", str(flows.diamond_result(n))), (instance_id, status, result)
    assert_each_step_accepted_once(history, ids, flows.DIAMOND_STEPS)
    assert_invariants(db.engine)
    lease_expired = len(history.of("lease_expired"))
    assert lease_expired == 0, f"{lease_expired} leases expired: {history.of('lease_expired')[:5]}"
    heartbeat_warnings = slow.logs.count("heartbeat failed")
    assert heartbeat_warnings == 0, slow.logs[-4000:]

    steps = cfg.instances * len(flows.DIAMOND_STEPS)
    round_trips_per_step = turns / steps
    rtt = shape.round_trip_seconds
    explained = steps * round_trips_per_step * rtt / cfg.workers
    stall_allowance = stalls * cfg.stall_seconds
    bound = direct.seconds + 2 * explained + stall_allowance + BOUND_SLACK_SECONDS
    assert turns >= steps, f"only {turns} round trips for {steps} steps: the workers bypassed the link"
    assert stalls > 0, f"no chunk of {chunks} was held: the link lost nothing"
    numbers = {
        "workers": cfg.workers,
        "instances_per_drain": cfg.instances,
        "steps_per_drain": steps,
        "lease_seconds": cfg.lease_seconds,
        "one_way_delay_ms": round(cfg.delay_seconds * 1000),
        "round_trip_ms": round(rtt * 1000),
        "loss": cfg.loss,
        "stall_ms": round(cfg.stall_seconds * 1000),
        "direct_seconds": round(direct.seconds, 2),
        "slow_seconds": round(slow.seconds, 2),
        "direct_steps_per_second": round(steps / direct.seconds, 1),
        "slow_steps_per_second": round(steps / slow.seconds, 1),
        "round_trips_per_step": round(round_trips_per_step, 2),
        "chunks": chunks,
        "stalls": stalls,
        "connections": connections,
        "explained_seconds": round(explained, 2),
        "bound_seconds": round(bound, 2),
        "direct_startup_seconds": round(direct.startup_seconds, 2),
        "slow_startup_seconds": round(slow.startup_seconds, 2),
        "slow_db_verify_seconds": round(verify_seconds, 2),
        "lease_expired": lease_expired,
        "seed": seed,
        "full_scale": FULL,
    }
    report("slow_network", numbers)
    assert slow.seconds <= bound, (
        f"the slow drain took {slow.seconds:.2f} s, more than the round trips explain ({bound:.2f} s): "
        f"{numbers}"
    )
