"""Item 9, clock skew: leases, availability and heartbeats use the database clock, never a worker's.

Two checks. Reading the code: no wall-clock call (``time.time()``,
``datetime.now()``, ...) in the code that computes leases, available-at
times or heartbeats, and the few wall-clock calls elsewhere are on an
explicit allow-list. Running it (PostgreSQL): two workers whose clocks are
10 minutes fast and 10 minutes slow share a queue of steps that outlast
their lease; every step is claimed once, renewed, and reported, and the
leases the database holds are "now + lease" on the database's clock.
"""

from __future__ import annotations

import ast
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.dialects import dialect_of
from fuseline.broker.sql.models import steps
from tests.conftest import url_text
from tests.reliability import flows
from tests.reliability.scan import PACKAGE, Call, calls_in, calls_in_source, python_files
from tests.reliability.support import FLOWS, FUSELINE, REPOSITORY, kill, subprocess_env

WALL_CLOCK = {
    "time.time",
    "time.time_ns",
    "datetime.datetime.now",
    "datetime.datetime.utcnow",
    "datetime.datetime.today",
    "datetime.date.today",
    "time.clock_gettime",  # CLOCK_REALTIME is the wall clock too
    "time.clock_gettime_ns",
}

#: Where leases, available-at times and heartbeats are decided: no wall clock at all.
LEASE_CODE = [
    PACKAGE / "broker" / "sql",
    PACKAGE / "engines",
    PACKAGE / "broker" / "dag.py",
    PACKAGE / "broker" / "reports.py",
]

#: Every wall-clock call in fuseline, with the reason it is harmless. (file, function, call)
ALLOWED = {
    # Instance and worker ids are UUIDv7: the timestamp orders ids, no deadline is computed from it.
    ("fuseline/broker/ids.py", "new_id", "time.time_ns"),
    # MemoryBroker (one process, no shared clock): wall time only for the timestamps it shows;
    # its leases use time.monotonic() (test_memory_broker_uses_wall_time_only_for_display).
    ("fuseline/broker/memory_records.py", "utcnow", "datetime.datetime.now"),
    # MemoryBroker's schedules tick on the wall clock, the only clock one process shares with
    # the time zones of cron expressions (a test injects its own clock).
    ("fuseline/broker/memory_schedules.py", "wall_clock", "datetime.datetime.now"),
    # Checking a cron expression when a schedule is added: it must yield a next tick from some
    # time; the fire times stored come from the database clock (SqlBroker).
    ("fuseline/broker/schedules.py", "ScheduleSpec.of", "datetime.datetime.now"),
    # The CLI's "duration" column of a step still running.
    ("fuseline/cli/common.py", "duration", "datetime.datetime.now"),
    # SQLite's database clock (fuseline_now() / fuseline_now_plus() in SQL): a SQLite file is
    # used by processes on one machine, which share that machine's clock; it is read in Python
    # only for microsecond resolution (SQLite's own 'now' has milliseconds). PostgreSQL leases
    # use the server's clock_timestamp().
    ("fuseline/broker/sql/engine.py", "sqlite_now", "datetime.datetime.now"),
    ("fuseline/broker/sql/engine.py", "sqlite_now_plus", "datetime.datetime.now"),
    # The dashboard's signed cookies (the session, and the sign-in form's pre-session) expire
    # by the server's clock: a skewed server ends sessions early or late, never a lease.
    ("fuseline/service/dashboard/sessions.py", "issue", "time.time"),
    ("fuseline/service/dashboard/sessions.py", "read", "time.time"),
    ("fuseline/service/dashboard/presession.py", "issue", "time.time"),
    ("fuseline/service/dashboard/presession.py", "nonce_of", "time.time"),
}

#: Allowed inside LEASE_CODE: the database clock itself (see ALLOWED).
DATABASE_CLOCK = {
    ("fuseline/broker/sql/engine.py", "sqlite_now"),
    ("fuseline/broker/sql/engine.py", "sqlite_now_plus"),
}


def wall_clock_calls(*roots: Path) -> list[Call]:
    return [c for path in python_files(*roots) for c in calls_in(path) if c.name in WALL_CLOCK]


def test_the_scanner_finds_wall_clock_calls_however_they_are_imported() -> None:
    source = (
        "import time\nimport datetime as dt\nfrom time import time_ns as ns\n"
        "from datetime import datetime\n"
        "def lease():\n    return time.time() + ns() + dt.datetime.utcnow().second\n"
        "class Beat:\n    def due(self):\n        return datetime.now()\n"
    )
    found = {(c.function, c.name) for c in calls_in_source(source) if c.name in WALL_CLOCK}
    assert found == {
        ("lease", "time.time"),
        ("lease", "time.time_ns"),
        ("lease", "datetime.datetime.utcnow"),
        ("Beat.due", "datetime.datetime.now"),
    }


def test_lease_available_at_and_heartbeat_code_never_reads_the_wall_clock() -> None:
    found = [c for c in wall_clock_calls(*LEASE_CODE) if (c.path, c.function) not in DATABASE_CLOCK]
    assert found == [], "\n".join(map(str, found))


def test_every_wall_clock_call_in_fuseline_is_on_the_allow_list() -> None:
    found = {(c.path, c.function, c.name) for c in wall_clock_calls(PACKAGE)}
    assert found - ALLOWED == set(), "wall-clock calls not on the allow-list"
    assert ALLOWED - found == set(), "the allow-list names calls that no longer exist: update it"


#: MemoryBroker fields that only show times to users.
DISPLAY_FIELDS = {"now", "started_at", "finished_at", "stopped_at", "last_heartbeat", "created_at", "at"}


def _monotonic(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and ast.unparse(n.func) == "time.monotonic" for n in ast.walk(node))


def test_memory_broker_uses_wall_time_only_for_display() -> None:
    """Its one wall-clock helper feeds display fields; every lease deadline comes from time.monotonic()."""
    tree = ast.parse((PACKAGE / "broker" / "memory.py").read_text())
    functions = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}

    # 1. Where _utcnow()'s value goes: a display field, or a keyword argument named like one.
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.value) == "_utcnow()":
            uses += [ast.unparse(t).split(".")[-1] for t in node.targets]
        elif isinstance(node, ast.keyword) and ast.unparse(node.value) == "_utcnow()":
            uses.append(node.arg)
    calls = sum(isinstance(n, ast.Call) and ast.unparse(n.func) == "_utcnow" for n in ast.walk(tree))
    assert calls == len(uses) > 0, "a _utcnow() call is used in an unexpected way"
    assert set(uses) <= DISPLAY_FIELDS, set(uses) - DISPLAY_FIELDS

    # 2. Every lease deadline is time.monotonic() + ..., a name bound to that, or None.
    for function in functions.values():
        monotonic_names = {
            t.id
            for n in ast.walk(function)
            if isinstance(n, ast.Assign) and _monotonic(n.value)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "lease_deadline" for t in node.targets
            ):
                value = node.value
                assert (
                    _monotonic(value)
                    or (isinstance(value, ast.Constant) and value.value is None)
                    or (isinstance(value, ast.Name) and value.id in monotonic_names)
                ), f"{function.name}: lease_deadline = {ast.unparse(value)}"

    # 3. The reaper compares deadlines with the monotonic clock.
    reaper = functions["_reap_expired"]
    assert any(isinstance(n, ast.Assign) and _monotonic(n.value) for n in ast.walk(reaper))
    compared = [ast.unparse(n) for n in ast.walk(reaper) if isinstance(n, ast.Compare)]
    assert any("lease_deadline <" in c for c in compared), compared


# -- behaviour: workers with skewed clocks ----------------------------------------------------

SKEWED_CLOCK = '''
"""Run before anything else (sitecustomize): shift this process's wall clocks."""
import datetime as _datetime
import os
import time as _time

_OFFSET = float(os.environ["FUSELINE_TEST_CLOCK_OFFSET"])
_real_time, _real_time_ns = _time.time, _time.time_ns
_time.time = lambda: _real_time() + _OFFSET
_time.time_ns = lambda: _real_time_ns() + int(_OFFSET * 1_000_000_000)


class _SkewedDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + _datetime.timedelta(seconds=_OFFSET)

    @classmethod
    def utcnow(cls):
        return super().utcnow() + _datetime.timedelta(seconds=_OFFSET)

    @classmethod
    def today(cls):
        return cls.now()


_datetime.datetime = _SkewedDatetime
'''

LEASE_SECONDS = 2.0
NAP_SECONDS = 2.2  # longer than the lease: only renewals keep it
OFFSET_SECONDS = 600.0


def _lease_margins(url: str) -> list[float]:
    """Seconds from the database's now to each RUNNING step's lease expiry."""
    engine = sa.create_engine(url)
    try:
        now = dialect_of(engine.dialect.name).now()
        query = sa.select(steps.c.lease_expires_at, sa.type_coerce(now, sa.DateTime(timezone=True))).where(
            steps.c.state == Status.RUNNING.value
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    return [(_utc(expires) - _utc(now)).total_seconds() for expires, now in rows]


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive UTC times, PostgreSQL aware ones."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def test_workers_with_clocks_ten_minutes_off_neither_reclaim_early_nor_stall(
    postgres_url: URL, tmp_path: Path
) -> None:
    """PostgreSQL only: a SQLite file is shared by processes of one machine, so by one clock.

    The offset is applied inside each worker (``time.time``, ``time.time_ns``
    and ``datetime`` replaced by a ``sitecustomize`` before fuseline is
    imported), which is what a machine with a wrong clock looks like to it.
    """
    db_url = url_text(postgres_url)
    broker = SqlBroker(db_url)
    try:
        ids = broker.dispatch_many(flows.nap.to_schema(), [{"seconds": NAP_SECONDS}] * 4)
    finally:
        broker.close()
    (tmp_path / "sitecustomize.py").write_text(SKEWED_CLOCK)
    workers: list[subprocess.Popen[str]] = []
    try:
        for n, offset in enumerate((OFFSET_SECONDS, -OFFSET_SECONDS)):
            env = subprocess_env(tmp_path, FUSELINE_TEST_CLOCK_OFFSET=str(offset))
            command = [str(FUSELINE), "--database-url", db_url, "worker", "run", f"{FLOWS}:nap", "--burst"]
            command += ["--lease-seconds", str(LEASE_SECONDS), "--poll-interval", "0.05"]
            with (tmp_path / f"worker-{n}.err").open("w") as err:
                workers.append(
                    subprocess.Popen(
                        command, cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True
                    )
                )
        margins: list[float] = []
        deadline = time.monotonic() + 60  # no stall: 4 naps of 2.2 s on 2 workers take ~5 s
        while any(w.poll() is None for w in workers):
            assert time.monotonic() < deadline, "the skewed workers did not finish in time"
            margins += _lease_margins(db_url)
            time.sleep(0.1)
        errors = [(tmp_path / f"worker-{n}.err").read_text() for n in range(2)]
        assert [w.returncode for w in workers] == [0, 0], errors
    finally:
        kill(workers)

    # Leases were set and renewed on the database's clock: never ~10 minutes off.
    assert margins, "never saw a RUNNING step"
    assert all(-0.5 < m <= LEASE_SECONDS + 0.5 for m in margins), sorted(margins)[
        :: max(1, len(margins) // 10)
    ]

    broker = SqlBroker(db_url)
    try:
        offsets_seen = set()
        for instance_id in ids:
            info = broker.get_instance(instance_id)
            assert info.status is Status.SUCCEEDED, info
            (step,) = info.steps
            assert step.attempt == 1, f"step re-claimed: attempt {step.attempt}"
            kinds = [e.kind for e in broker.instance_events(instance_id)]
            assert kinds.count("claimed") == 1 and "lease_expired" not in kinds, kinds
            # the step saw its worker's skewed clocks (so the skew was really in effect)
            now = time.time()
            skews = {round((step.result[k] - now) / OFFSET_SECONDS) for k in ("time", "time_ns", "datetime")}
            assert len(skews) == 1, step.result
            offsets_seen |= skews
        assert offsets_seen == {1, -1}, "each skewed worker should have run a step"
    finally:
        broker.close()
