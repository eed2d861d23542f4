"""Issue 16 case 6, clock jumps: a worker's wall clock jumps an hour forward and back while it works.

The workers are real ``fuseline worker run`` processes under Debian's
``libfaketime`` (LD_PRELOAD), which fakes ``CLOCK_REALTIME`` for the whole
process (``time.time``, ``datetime.now``, ``gettimeofday`` in C code too). Its
offset is read from a file on every clock call (``FAKETIME_TIMESTAMP_FILE``
with ``FAKETIME_NO_CACHE=1``), so the test moves a running worker's clock by
rewriting that file: ``+0``, then ``+1h``, back to ``+0``, then ``+1h`` again.

``CLOCK_MONOTONIC`` is left alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``), as on a
real machine whose clock is stepped (NTP, an operator's ``date -s``, a VM
restored from a snapshot): the kernel never moves the monotonic clock then.
It cannot be faked for CPython with libfaketime 0.9.10 anyway: the faked
monotonic clock starts at the epoch time, and ``sem_clockwait`` (what every
``threading`` wait with a timeout calls) is not intercepted, so the first
``Event.wait(1)`` of the process waits for decades. And with the monotonic
clock left alone, libfaketime's ``clock_nanosleep(TIMER_ABSTIME)`` subtracts
the faked epoch time from a monotonic deadline and fails with EINVAL, which is
what ``time.sleep`` calls: a ``sitecustomize`` makes ``time.sleep`` wait on an
event instead (real monotonic clock, same duration).

Pass: every step is claimed once and accepted once, no lease expires, the
leases the database holds are "database now + lease" throughout, the drain
takes the time its steps take (no worker sleeps an hour), and an ``--every 1``
schedule fired only by faked workers has one instance per second of database
time, none missing, none doubled, none an hour off.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.verify import verify
from tests.chaos.history import db_now
from tests.chaos.scale import report
from tests.conftest import url_text
from tests.reliability import flows
from tests.reliability.support import FLOWS, FUSELINE, REPOSITORY, kill, ok, subprocess_env, wait_for
from tests.reliability.test_clock_skew import _lease_margins

#: Where Debian's libfaketime package puts the library (any architecture).
LIBFAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"

SLEEP_ON_AN_EVENT = '''
"""Run before anything else (sitecustomize): time.sleep without libfaketime's clock_nanosleep.

With FAKETIME_DONT_FAKE_MONOTONIC=1, libfaketime 0.9.10 turns the absolute
monotonic deadline CPython's time.sleep passes to clock_nanosleep into a
negative time (EINVAL). A threading wait (sem_clockwait, not intercepted)
sleeps for the same time on the real monotonic clock.
"""
import threading as _threading
import time as _time


def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    _threading.Event().wait(seconds)


_time.sleep = _sleep
'''

HOUR = 3600.0
LEASE_SECONDS = 2.0
NAP_SECONDS = 2.2  # longer than the lease: only renewals keep it
NAPS = 8
WORKERS = 2
#: The worker clock's offsets, in order, and how long each lasts (seconds).
JUMPS = ("+1h", "+0", "+1h")
JUMP_EVERY = 2.0


def libfaketime() -> Path:
    found = sorted(Path("/").glob(LIBFAKETIME_GLOB.lstrip("/")))
    assert found, f"no {LIBFAKETIME_GLOB}: apt-get install libfaketime (make test does)"
    return found[0]


class FakeClock:
    """A wall-clock offset that libfaketime reads on every clock call of the processes it is given to."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / "faketime"
        self.set("+0")
        (folder / "sitecustomize.py").write_text(SLEEP_ON_AN_EVENT)
        self.env = subprocess_env(
            folder,
            LD_PRELOAD=str(libfaketime()),
            FAKETIME_TIMESTAMP_FILE=str(self.file),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
        )

    def set(self, offset: str) -> None:
        temporary = self.file.with_suffix(".new")
        temporary.write_text(offset + "\n")
        temporary.replace(self.file)  # a reader sees the old offset or the new one, never half a file


@contextmanager
def faked_workers(clock: FakeClock, folder: Path, db_url: str, spec: str, *options: str) -> Iterator[list]:
    workers: list[subprocess.Popen[str]] = []
    try:
        for n in range(WORKERS):
            command = [str(FUSELINE), "--database-url", db_url, "worker", "run", spec, *options]
            with (folder / f"worker-{n}.err").open("w") as err:
                process = subprocess.Popen(
                    command, cwd=REPOSITORY, env=clock.env, stdout=subprocess.DEVNULL, stderr=err, text=True
                )
            workers.append(process)
        yield workers
    finally:
        kill(workers)


def worker_logs(folder: Path) -> str:
    return "\n".join((folder / f"worker-{n}.err").read_text() for n in range(WORKERS))


def run_fuseline(db_url: str, env: dict[str, str], *args: str) -> None:
    command = [str(FUSELINE), "--database-url", db_url, *args]
    ok(subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=60))


def test_a_faked_clock_jumps_in_the_worker_process(tmp_path: Path) -> None:
    """The harness itself: the offset written to the file is what a running process reads."""
    clock = FakeClock(tmp_path)
    # reads the test's time.time(), prints how many hours its own clock is ahead
    probe = (
        "import sys, time\nfor t in sys.stdin:\n    print(round((time.time() - float(t)) / 3600), flush=True)"
    )
    process = subprocess.Popen(
        [str(Path(FUSELINE).parent / "python"), "-c", probe],
        env=clock.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        assert process.stdin is not None and process.stdout is not None
        for offset in ("+0", *JUMPS):
            clock.set(offset)
            process.stdin.write(f"{time.time()}\n")
            process.stdin.flush()
            seen.append(int(process.stdout.readline()))
            time.sleep(0.1)  # the faked time.sleep (an event wait) in the child must keep working too
    finally:
        kill([process])
    assert seen == [0, 1, 0, 1]


def test_leases_are_renewed_on_the_database_clock_while_the_worker_clock_jumps_an_hour(
    postgres_url: URL, tmp_path: Path
) -> None:
    db_url = url_text(postgres_url)
    broker = SqlBroker(db_url)
    try:
        ids = broker.dispatch_many(flows.nap.to_schema(), [{"seconds": NAP_SECONDS}] * NAPS)
    finally:
        broker.close()
    clock = FakeClock(tmp_path)
    options = ("--burst", "--lease-seconds", str(LEASE_SECONDS), "--poll-interval", "0.05")
    margins: list[float] = []
    started = time.monotonic()
    with faked_workers(clock, tmp_path, db_url, f"{FLOWS}:nap", *options) as workers:
        jumps = list(JUMPS)
        # Naps end in rounds, 2.2 s apart from the first claim; the jumps at 1, 3 and 5 s after it
        # put the end of the first round at +1h, the second at +0 and the third at +1h.
        next_jump: float | None = None
        # no stall: 8 naps of 2.2 s on 2 workers take ~9 s plus start-up
        deadline = started + 60
        while any(w.poll() is None for w in workers):
            assert time.monotonic() < deadline, f"the drain did not finish:\n{worker_logs(tmp_path)}"
            if jumps and next_jump is not None and time.monotonic() >= next_jump:
                clock.set(jumps.pop(0))
                next_jump += JUMP_EVERY
            margins += _lease_margins(db_url)
            if next_jump is None and margins:
                next_jump = time.monotonic() + JUMP_EVERY / 2
            time.sleep(0.1)
        drained = time.monotonic() - started
        assert [w.returncode for w in workers] == [0] * WORKERS, worker_logs(tmp_path)
    assert jumps == [], f"the drain ended before every jump ({drained:.1f} s)"
    assert "Traceback" not in worker_logs(tmp_path), worker_logs(tmp_path)

    broker = SqlBroker(db_url)
    try:
        offsets = Counter()
        claims = accepted = 0
        for instance_id in ids:
            info = broker.get_instance(instance_id)
            assert info.status is Status.SUCCEEDED, info
            (step,) = info.steps
            assert step.attempt == 1, f"step re-claimed: attempt {step.attempt}"
            kinds = [e.kind for e in broker.instance_events(instance_id)]
            assert "lease_expired" not in kinds, kinds
            claims += kinds.count("claimed")
            accepted += kinds.count("succeeded")
            # the step ran under the faked clock: its wall clocks were 0 or 1 hour ahead
            hours = {round((step.result[k] - time.time()) / HOUR) for k in ("time", "time_ns", "datetime")}
            assert len(hours) == 1, step.result
            offsets[hours.pop()] += 1
    finally:
        broker.close()
    engine = sa.create_engine(db_url)
    try:
        violations = [str(v) for v in verify(engine)]
    finally:
        engine.dispose()

    report(
        "clock_jumps_leases",
        {
            "workers": WORKERS,
            "steps": NAPS,
            "lease_s": LEASE_SECONDS,
            "step_s": NAP_SECONDS,
            "jumps": " ".join(JUMPS),
            "drain_s": round(drained, 2),
            "claims": claims,
            "accepted": accepted,
            "steps_run_at_+0h": offsets[0],
            "steps_run_at_+1h": offsets[1],
            "lease_margin_min_s": round(min(margins), 3),
            "lease_margin_max_s": round(max(margins), 3),
            "lease_samples": len(margins),
        },
    )
    assert claims == accepted == NAPS
    assert set(offsets) == {0, 1}, f"the jumps were not in effect: {offsets}"
    # Leases were set and renewed on the database's clock: never an hour off, never run out.
    assert margins, "never saw a RUNNING step"
    assert all(0 < m <= LEASE_SECONDS + 0.05 for m in margins), sorted(margins)[:: max(1, len(margins) // 10)]
    assert drained < 3 * NAPS / WORKERS * NAP_SECONDS, f"the drain took {drained:.1f} s: a worker stalled"
    assert violations == []


SCHEDULE = "tick"


def scheduled_ticks(engine: sa.Engine) -> list[tuple[datetime, str]]:
    """(tick, status) of every instance the schedule fired (its key is ``tick@TIME``)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT key, status FROM fuseline_instances WHERE workflow_id = :w"),
            {"w": flows.diamond.workflow_id},
        ).all()
    ticks = []
    for row in rows:
        name, _, when = row.key.partition("@")
        assert name == SCHEDULE, row.key
        ticks.append((datetime.fromisoformat(when), row.status))
    return ticks


#: Serial: a tick nobody fired while it was due is skipped by design (DESIGN.md: "ticks missed
#: while nothing ran: only the latest fires"), and each worker looks at most every 0.5 s; on the
#: machine loaded by the parallel part of `make test` both workers once stalled for over a second
#: and one tick of eleven was skipped. The test checks ticks against the database's clock, which
#: needs workers that get the CPU.
@pytest.mark.serial
def test_an_every_1_schedule_fires_once_per_database_second_while_the_worker_clock_jumps(
    postgres_url: URL, tmp_path: Path
) -> None:
    db_url = url_text(postgres_url)
    clock = FakeClock(tmp_path)
    clock.set("+1h")  # added from a machine an hour fast: the first fire time is still the database's
    add = ["schedules", "add", f"{FLOWS}:diamond", "--every", "1", "--name", SCHEDULE, "--input", "x=1"]
    run_fuseline(db_url, clock.env, *add)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            first_fire = conn.execute(sa.text("SELECT next_fire_at FROM fuseline_schedules")).scalar_one()
        added_at = db_now(engine)
        assert abs((first_fire - added_at).total_seconds()) <= 2, (first_fire, added_at)
        clock.set("+0")

        options = ("--lease-seconds", "2", "--poll-interval", "0.2")
        with faked_workers(clock, tmp_path, db_url, f"{FLOWS}:diamond", *options) as workers:
            wait_for(lambda: worker_logs(tmp_path).count("started (pid") == WORKERS, 60, "the workers")
            began_at = db_now(engine)
            for offset in JUMPS:
                time.sleep(JUMP_EVERY)
                clock.set(offset)
            time.sleep(JUMP_EVERY)
            run_fuseline(db_url, subprocess_env(), "schedules", "pause", SCHEDULE)
            ended_at = db_now(engine)
            deadline = time.monotonic() + 30
            while not all(status == "SUCCEEDED" for _, status in scheduled_ticks(engine)):
                assert time.monotonic() < deadline, f"instances left unfinished:\n{worker_logs(tmp_path)}"
                assert all(w.poll() is None for w in workers), worker_logs(tmp_path)
                time.sleep(0.2)
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            codes = [worker.wait(timeout=30) for worker in workers]
        assert codes == [0] * WORKERS, worker_logs(tmp_path)
        assert "Traceback" not in worker_logs(tmp_path), worker_logs(tmp_path)
        violations = [str(v) for v in verify(engine)]
        fired = scheduled_ticks(engine)
    finally:
        engine.dispose()

    per_tick = Counter(tick for tick, _ in fired)
    ticks = sorted(per_tick)
    assert ticks, "the schedule never fired"
    span = int((ticks[-1] - ticks[0]).total_seconds())
    expected = [ticks[0] + timedelta(seconds=s) for s in range(span + 1)]
    missing = sorted(set(expected) - set(per_tick))
    doubled = {t: n for t, n in per_tick.items() if n > 1}
    database_seconds = (ended_at - began_at).total_seconds()
    report(
        "clock_jumps_schedule",
        {
            "workers": WORKERS,
            "jumps": " ".join(JUMPS),
            "first_fire_after_add_at_+1h_s": round((first_fire - added_at).total_seconds(), 3),
            "database_s": round(database_seconds, 2),
            "ticks_fired": len(per_tick),
            "instances": len(fired),
            "missing_ticks": len(missing),
            "ticks_with_more_than_one_instance": len(doubled),
            "first_tick_after_start_s": round((ticks[0] - began_at).total_seconds(), 3),
            "last_tick_before_end_s": round((ended_at - ticks[-1]).total_seconds(), 3),
        },
    )
    assert violations == []
    assert doubled == {}, doubled
    assert missing == [], [t.isoformat() for t in missing]
    # every tick is a second of database time between the start and the pause: none an hour off
    assert all(t.microsecond == 0 for t in ticks), ticks
    assert began_at - timedelta(seconds=2) <= ticks[0] <= began_at + timedelta(seconds=3), ticks[0]
    assert ended_at - timedelta(seconds=3) <= ticks[-1] <= ended_at, (ticks[-1], ended_at)
    assert abs(len(per_tick) - database_seconds) <= 3, (len(per_tick), database_seconds)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in ticks)
    assert datetime.now(timezone.utc) - ticks[-1] < timedelta(minutes=5)
