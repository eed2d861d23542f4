"""Crash chaos behind ``fuseline server``: workers SIGKILLed at random, and the server itself.

The crash chaos of :mod:`tests.chaos.test_chaos_crash`, with the workers
talking to the database only through a server: real ``fuseline worker run
tests.chaos.flows:diamond --server URL --token T`` processes whose
environment holds no database URL (the steps' ledger has its own variable).
Every ``kill_every`` seconds a random worker is SIGKILLed and a replacement
started; when a share of the instances is done, the server process is
SIGKILLed too and, after ``outage_seconds``, started again on the same port.
The workers that lived through the outage must wait it out (they see
``ServiceUnavailable``, a ``DatabaseUnavailable``, and retry with backoff)
and work again by themselves; none may exit. Pass:

- every instance SUCCEEDED with the right result, nothing is left to run,
  ``fuseline db verify`` finds no violation;
- exactly one accepted success per step, and the accepted attempt is in the
  ledger, executed by the process of the worker that claimed it;
- at least one ledger row per step, never two under one claim; a step ran
  more than once only if a killed worker claimed it or a lease expired;
- every orphan of a killed worker was claimed again within 2 x lease of the
  kill, as with database workers, plus the time the server was down. Behind
  a server every worker's claims go through one broker on many threads; a
  claim that began before the reaper put a step back once moved the claim
  floor up over it, hiding it until the next full scan (6-7.5 s seen here):
  the floors are pinned since (see ``fuseline.broker.sql.claimfloor``).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances, steps, workers
from fuseline.engines.retry import JITTER, RECONNECT_DELAYS
from fuseline.service.server import ServerSettings
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase
from tests.chaos.history import (
    History,
    assert_each_step_accepted_once,
    assert_invariants,
    aware,
    db_now,
    ledger_by_step,
    load_history,
)
from tests.chaos.http_fleet import HttpWorkers
from tests.chaos.scale import FULL, pick, report
from tests.chaos.workers import REPOSITORY, SCRIPT, Worker, worker_env
from tests.support.servers import ServerProcess, create_token

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class HttpCrash:
    workers: int
    instances: int
    lease_seconds: float
    kill_every: float
    #: How many times the server is SIGKILLed, evenly over the drain, and how long it stays down.
    server_kills: int
    outage_seconds: float
    pause: float = 0.005


# Scaled down, the lease is 3 s for the reason given beside CRASH_SQLITE in tests/chaos/scale.py.
CFG = pick(
    HttpCrash(
        workers=4, instances=150, lease_seconds=3.0, kill_every=2.0, server_kills=1, outage_seconds=1.0
    ),
    HttpCrash(
        # Kills every 2 s, not the 0.5 s of database workers: a worker through a server starts and
        # runs several times slower on 2 cores, and at 0.5 s most of the fleet was always starting,
        # so steps ran out of their 3 claims ("worker lost") before any worker held them long.
        workers=6,
        instances=2_000,
        lease_seconds=5.0,
        kill_every=2.0,
        server_kills=3,
        outage_seconds=3.0,
    ),
)
DRAIN_LIMIT_SECONDS = pick(120.0, 1800.0)
#: A worker's own log line for a server it cannot reach (ServiceUnavailable's message).
UNREACHABLE = "cannot be reached"
STEP_LINE = " state=SUCCEEDED "


def progress(engine: sa.Engine) -> tuple[int, int]:
    """(instances finished, steps succeeded): the drain ends with the first, the server kills
    follow the second (diamonds finish late, once most of their A, B and C steps are done)."""
    final = ["SUCCEEDED", "FAILED", "CANCELLED"]
    with engine.connect() as conn:
        done = conn.execute(
            sa.select(sa.func.count()).select_from(instances).where(instances.c.status.in_(final))
        ).scalar_one()
        succeeded = conn.execute(
            sa.select(sa.func.count()).select_from(steps).where(steps.c.state == "SUCCEEDED")
        ).scalar_one()
    return done, succeeded


def dispatch(url: str, count: int, pause: float) -> list[str]:
    broker = SqlBroker(url)
    try:
        return broker.dispatch_many(
            flows.diamond.to_schema(), [{"n": n, "pause": pause} for n in range(count)]
        )
    finally:
        broker.close()


@dataclass
class Outage:
    """One SIGKILL of the server: when (database clock), for how long, and who lived through it."""

    killed_at: datetime
    seconds: float
    back_at: datetime | None = None
    #: Workers alive at the kill, with the number of steps each had logged when the server came back.
    survivors: dict[Worker, int] = field(default_factory=dict)

    def limit(self, lease_seconds: float) -> float:
        """How long an orphan whose recovery this outage got in the way of may take: two leases,
        the outage, and the longest pause a worker's backoff can reach during it (the workers
        claim again only when their next attempt comes)."""
        return 2 * lease_seconds + self.seconds + slowest_return(self.seconds)

    def delays(self, killed: datetime, lease_seconds: float) -> bool:
        """Whether a worker killed at ``killed`` left orphans due while the server was down, or
        while the workers that lived through it may still be pausing before their next attempt."""
        assert self.back_at is not None
        returned = self.back_at + timedelta(seconds=slowest_return(self.seconds))
        return killed <= returned and killed + timedelta(seconds=2 * lease_seconds) >= self.killed_at


def slowest_return(down: float) -> float:
    """The longest pause a worker can be in when a server ``down`` seconds comes back: the
    pauses of its backoff at their shortest jitter fit the most failures into the outage,
    and the next pause may come at its longest."""
    elapsed, failures = 0.0, 0
    while elapsed < down:
        elapsed += RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)] * JITTER[0]
        failures += 1
    return RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)] * JITTER[1]


def registered(workers: list[Worker]) -> list[Worker]:
    """The workers that have registered (killing one still importing tests no recovery)."""
    return [w for w in workers if "started (pid" in w.stderr]


def all_started(workers: list[Worker]) -> bool:
    """Whether every worker has registered: one still starting when the server goes away exits 1
    (an unreachable server at start is an answer, as an unreachable database is), by design."""
    return len(registered(workers)) == len(workers)


def steps_logged(worker: Worker) -> int:
    return worker.stderr.count(STEP_LINE)


@pytest.mark.timeout(DRAIN_LIMIT_SECONDS + 180)
def test_http_workers_and_the_server_killed_at_random_lose_nothing(
    chaos_postgres: ChaosDatabase, tmp_path: Path
) -> None:
    db, cfg = chaos_postgres, CFG
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = ServerProcess(ServerSettings(db.url, lease_seconds=cfg.lease_seconds)).start()
    token = create_token(db.url, "chaos-workers", "worker")
    ids = dispatch(db.url, cfg.instances, cfg.pause)
    ids_by_n = dict(enumerate(ids))
    total_steps = cfg.instances * len(flows.DIAMOND_STEPS)
    marks = [total_steps * (k + 1) // (cfg.server_kills + 1) for k in range(cfg.server_kills)]

    kills: list[tuple[int, datetime]] = []
    victims: set[Worker] = set()
    outages: list[Outage] = []
    worked_after = 0  # survivors that ran steps after an outage
    deferred = 0  # replacements owed while the server is down (a worker that cannot reach one exits 1)
    began = time.monotonic()
    try:
        fleet = HttpWorkers(tmp_path / "workers", db.url, server.url, token, "tests.chaos.flows:diamond")
        with fleet:
            for _ in range(cfg.workers):
                fleet.start()
            down_since: float | None = None
            next_kill = time.monotonic() + cfg.kill_every
            while (done := progress(db.engine))[0] < cfg.instances:
                now = time.monotonic()
                assert now - began < DRAIN_LIMIT_SECONDS, (
                    f"not drained in {DRAIN_LIMIT_SECONDS:g} s (seed {seed}):\n{fleet.logs(fleet.alive())}"
                )
                broken = fleet.unexpected_exits()
                assert not broken, f"a worker exited on its own (seed {seed}):\n{fleet.logs(broken)}"
                server_due = down_since is None and bool(marks) and done[1] >= marks[0]
                if server_due and all_started(fleet.alive()):
                    marks.pop(0)
                    survivors = fleet.alive()
                    server.kill()
                    down_since = time.monotonic()
                    outages.append(Outage(db_now(db.engine), 0.0, survivors=dict.fromkeys(survivors, 0)))
                elif down_since is not None and now - down_since >= cfg.outage_seconds:
                    server.start()
                    outage = outages[-1]
                    outage.seconds = time.monotonic() - down_since
                    outage.back_at = db_now(db.engine)
                    outage.survivors = {w: steps_logged(w) for w in outage.survivors if w.alive()}
                    down_since = None
                    for _ in range(deferred):
                        fleet.start()
                    deferred = 0
                if now >= next_kill and server_due:  # the replacements register first
                    next_kill = now + cfg.kill_every / 2
                elif now >= next_kill:
                    victim = rng.choice(registered(fleet.alive()) or fleet.alive())
                    victim.kill()
                    victims.add(victim)
                    kills.append((victim.pid, db_now(db.engine)))
                    if down_since is None:
                        fleet.start()
                    else:
                        deferred += 1
                    next_kill += cfg.kill_every
                time.sleep(0.02)
            seconds = time.monotonic() - began
            assert down_since is None and not marks, "the drain ended before every server kill was done"
            for worker in fleet.alive():
                worker.wait_for_log("started (pid")
            codes = fleet.stop_all()
            assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
            tracebacks = [w for w in fleet.started if "Traceback" in w.stderr]
            assert not tracebacks, fleet.logs(tracebacks)
            started = len(fleet.started)
            # Every worker that lived through an outage saw it, and reached the server again.
            for outage in outages:
                assert outage.back_at is not None
                for worker in outage.survivors:
                    # Steps logged after the server came back, by this worker, killed since or not.
                    worked_after += steps_logged(worker) > outage.survivors[worker]
                    if worker in victims:
                        continue  # SIGKILLed later: it may not have had the time
                    assert UNREACHABLE in worker.stderr, f"never saw the server down:\n{worker.tail()}"
                    contact = last_contact(db.engine, worker.pid)
                    assert contact is not None and contact > outage.back_at, (
                        f"no heartbeat or stop through the server after it came back:\n{worker.tail()}"
                    )
            assert worked_after, "no worker that lived through an outage ran a step after it"
    finally:
        server.stop()

    history = load_history(db.engine)
    for n, instance_id in ids_by_n.items():
        status, result = history.instance_states[instance_id]
        assert (status, result) == ("SUCCEEDED", str(flows.diamond_result(n))), (instance_id, status, result)
    assert_each_step_accepted_once(history, ids, flows.DIAMOND_STEPS)
    assert_invariants(db.engine)
    cli = subprocess.run(
        [str(SCRIPT), "db", "verify"],
        cwd=REPOSITORY,
        env=worker_env(db.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    executions = ledger_by_step(history, ids_by_n, flows.DIAMOND_STEPS)
    assert_accepted_runs_in_ledger(history, executions)

    killed_at = kill_times(history, kills)
    claims: dict[tuple[str, str], list] = defaultdict(list)
    for event in history.of("claimed"):
        claims[(event.instance_id, event.step)].append(event)
    accepted = {(e.instance_id, e.step): e.attempt for e in history.of("succeeded")}
    expired_steps = {(e.instance_id, e.step) for e in history.of("lease_expired")}

    reruns = {key: rows for key, rows in executions.items() if len(rows) > 1}
    for key, rows in reruns.items():
        claimers = {e.worker_id for e in claims[key]}
        assert claimers & set(killed_at) or key in expired_steps, (
            f"{key} ran {len(rows)} times, not claimed by a killed worker, no lease expired: {rows}"
        )

    expired_at = {(e.instance_id, e.step, e.attempt): e.at for e in history.of("lease_expired")}
    recoveries: list[float] = []
    for key, events in claims.items():
        for position, event in enumerate(events):
            if event.worker_id not in killed_at or event.attempt == accepted[key]:
                continue
            assert position + 1 < len(events), f"orphan {key} attempt {event.attempt} never claimed again"
            killed = killed_at[event.worker_id]
            recovered = (events[position + 1].at - killed).total_seconds()
            recoveries.append(recovered)
            limit = max(
                [2 * cfg.lease_seconds]
                + [o.limit(cfg.lease_seconds) for o in outages if o.delays(killed, cfg.lease_seconds)]
            )
            assert recovered <= limit, (
                f"orphan {key} attempt {event.attempt} claimed again {recovered:.2f} s after the kill "
                f"(limit {limit:.2f} s; killed at {killed}, "
                f"expired at {expired_at.get((*key, event.attempt))}; "
                f"outages {[(str(o.killed_at), round(o.seconds, 2)) for o in outages]})"
            )

    assert len(kills) >= 3, f"only {len(kills)} kills: the run ended too soon to test anything"
    assert recoveries, "no kill orphaned a step: the run tested no recovery"
    report(
        "crash_chaos_http",
        {
            "workers": cfg.workers,
            "instances": cfg.instances,
            "steps": len(ids) * len(flows.DIAMOND_STEPS),
            "lease_seconds": cfg.lease_seconds,
            "kill_every_seconds": cfg.kill_every,
            "kills": len(kills),
            "server_kills": len(outages),
            "server_down_seconds": [round(o.seconds, 2) for o in outages],
            "workers_through_outages": sum(len(o.survivors) for o in outages),
            "of_them_ran_steps_after": worked_after,
            "workers_started": started,
            "orphans": len(recoveries),
            "reruns": sum(len(rows) - 1 for rows in reruns.values()),
            "lease_expiries": len(history.of("lease_expired")),
            "max_recovery_seconds": round(max(recoveries), 3),
            "drain_seconds": round(seconds, 2),
            "seed": seed,
            "full_scale": FULL,
        },
    )


def assert_accepted_runs_in_ledger(history: History, executions: dict) -> None:
    """The accepted attempt of every step ran (a ledger row under that attempt), in the process
    of the worker that claimed that attempt: no result was accepted from a claim that never ran."""
    claimer = {(e.instance_id, e.step, e.attempt): e.worker_id for e in history.of("claimed")}
    for event in history.of("succeeded"):
        key = (event.instance_id, event.step)
        rows = [r for r in executions[key] if r.attempt == event.attempt]
        assert len(rows) == 1, f"{key}: accepted attempt {event.attempt} has ledger rows {executions[key]}"
        worker_id = claimer[(*key, event.attempt)]
        assert rows[0].pid == history.worker_pids[worker_id], (
            f"{key}: attempt {event.attempt} accepted from worker {worker_id} "
            f"(pid {history.worker_pids[worker_id]}) but ran in pid {rows[0].pid}"
        )


def last_contact(engine: sa.Engine, pid: int) -> datetime | None:
    """The last heartbeat or deregistration of the workers of process ``pid`` (database clock)."""
    latest = sa.func.max(sa.func.coalesce(workers.c.stopped_at, workers.c.last_heartbeat))
    with engine.connect() as conn:
        found = conn.execute(sa.select(latest).where(workers.c.pid == pid)).scalar_one()
    return aware(found) if found is not None else None


def kill_times(history: History, kills: list[tuple[int, datetime]]) -> dict[str, datetime]:
    """Worker id -> when it was SIGKILLed (a pid may be reused by a later worker)."""
    by_pid: dict[int, list[datetime]] = defaultdict(list)
    for pid, at in kills:
        by_pid[pid].append(at)
    killed_at: dict[str, datetime] = {}
    for worker_id, pid in history.worker_pids.items():
        later = [t for t in sorted(by_pid.get(pid, [])) if t >= history.worker_started[worker_id]]
        if later:
            killed_at[worker_id] = later[0]
    return killed_at
