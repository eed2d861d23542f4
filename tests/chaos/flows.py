"""Workflows the chaos tests run in real ``fuseline worker run tests.chaos.flows:NAME`` processes.

The ledger lives outside the broker: a table ``chaos_ledger`` in the same
database (created by the tests, never touched by fuseline). Every execution
of a ledger step inserts ``(n, instance, step, attempt, pid)`` before it
does its work, so a worker killed after that line leaves a row behind and
the re-run adds another. A step cannot see its assignment, so it reads
its instance and attempt from the step row its own worker process holds
(RUNNING, held by the worker registered with this pid and host, the newest
claim first); ``n`` is the instance's own input, which the tests map back
to the instance id as a cross-check. The ledger connection waits out
database outages (the restart tests cut it too), so an outage never fails
a step.

- ``diamond``: A -> {B, C} -> D (AND join); D returns ``2n + (n + 1)``;
  with ``gate``, A waits until that file exists.
- ``hold``: one step; its first execution waits until the file ``gate``
  exists, every later one returns at once; the result names the pid.
- ``poison``: one step; with ``poison=True`` it SIGKILLs its own worker.
- ``unit``: one step, for tests that claim and report through the API.
- ``join_and`` / ``join_or``: diamonds whose D is an AND or an OR join,
  for the join race (reported through the API, never run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from fuseline import Computed, Depends, Step, Workflow
from fuseline.policies import ConcurrencyLimit, RateLimit, RetryPolicy

DATABASE_ENV = "FUSELINE_DATABASE_URL"
#: The ledger's database for workers that have no ``FUSELINE_DATABASE_URL`` (behind a server).
LEDGER_ENV = "CHAOS_LEDGER_URL"
LEDGER_TABLE = "chaos_ledger"
#: How long a step waits for the database (a ledger insert) before giving up.
LEDGER_PATIENCE_SECONDS = 120.0
#: How long the first ``hold`` execution waits for its gate at most.
HOLD_LIMIT_SECONDS = 300.0

LEDGER_DDL = {
    "postgresql": (
        f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (id bigserial PRIMARY KEY, n integer NOT NULL, "
        "instance_id text, step text NOT NULL, attempt integer, pid integer NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ),
    "sqlite": (
        f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (id INTEGER PRIMARY KEY, n integer NOT NULL, "
        "instance_id text, step text NOT NULL, attempt integer, pid integer NOT NULL, "
        "at text NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))"
    ),
}

_HELD = """
    SELECT s.instance_id, s.attempt, i.inputs
      FROM fuseline_steps s JOIN fuseline_workers w ON w.id = s.worker_id
      JOIN fuseline_instances i ON i.id = s.instance_id
     WHERE w.pid = {p} AND w.host = {p} AND w.stopped_at IS NULL AND s.name = {p} AND s.state = 'RUNNING'
     ORDER BY s.started_at DESC
"""
_INSERT = "INSERT INTO chaos_ledger (n, instance_id, step, attempt, pid) VALUES ({p}, {p}, {p}, {p}, {p})"


def _this_execution(held: list[Any], n: int) -> Any:
    """Which of the held claims this execution is: the newest, or, when the worker holds several
    steps of this name (``--prefetch``), the one whose instance has input ``n``. If none has,
    the newest is returned, so the cross-check on ``n`` catches a step run with wrong inputs."""
    if len(held) > 1:
        for row in held:
            if json.loads(row[2]).get("n") == n:
                return row
    return held[0] if held else None


class Ledger:
    """This process's ledger connection (psycopg or sqlite3, in autocommit mode)."""

    def __init__(self) -> None:
        self._connection: Any = None
        self._dialect = ""

    def _connect(self) -> Any:
        from sqlalchemy.engine import make_url

        url = make_url(os.environ.get(LEDGER_ENV) or os.environ[DATABASE_ENV])
        if url.get_backend_name() == "sqlite":
            import sqlite3

            self._dialect = "sqlite"
            connection = sqlite3.connect(url.database or "", timeout=60, isolation_level=None)
        else:
            import psycopg

            self._dialect = "postgresql"
            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            connection = psycopg.connect(
                conninfo, autocommit=True, connect_timeout=5, application_name="chaos-ledger"
            )
        return connection

    def record(self, n: int, step: str) -> int | None:
        """Insert this execution's row; returns its attempt (None if the lease is already gone)."""
        deadline = time.monotonic() + LEDGER_PATIENCE_SECONDS
        while True:
            try:
                if self._connection is None:
                    self._connection = self._connect()
                p = "%s" if self._dialect == "postgresql" else "?"
                pid = os.getpid()
                query = _HELD.format(p=p)
                held = self._connection.execute(query, (pid, socket.gethostname(), step)).fetchall()
                row = _this_execution(held, n)
                instance_id, attempt = (str(row[0]), row[1]) if row is not None else (None, None)
                self._connection.execute(_INSERT.format(p=p), (n, instance_id, step, attempt, pid))
                return attempt
            except Exception:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken
                connection.close()


ledger = Ledger()


def wait_for_gate(gate: str) -> None:
    """Wait until the file ``gate`` exists (HOLD_LIMIT_SECONDS at most); an empty ``gate`` is open."""
    deadline = time.monotonic() + HOLD_LIMIT_SECONDS
    while gate and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


# -- diamond: A -> {B, C} -> D (AND join) -----------------------------------------------------


class A(Step):
    def run_step(self, n: int, pause: float = 0.005, gate: str = "") -> int:
        ledger.record(n, "a")
        wait_for_gate(gate)
        time.sleep(pause)
        return n


a = A()


class B(Step):
    def run_step(self, n: int, pause: float = 0.005, value: Computed[int] = Depends(a)) -> int:
        ledger.record(n, "b")
        time.sleep(pause)
        return value * 2


class C(Step):
    def run_step(self, n: int, pause: float = 0.005, value: Computed[int] = Depends(a)) -> int:
        ledger.record(n, "c")
        time.sleep(pause)
        return value + 1


b, c = B(), C()


class D(Step):
    def run_step(
        self,
        n: int,
        pause: float = 0.005,
        doubled: Computed[int] = Depends(b),
        plus_one: Computed[int] = Depends(c),
    ) -> int:
        ledger.record(n, "d")
        time.sleep(pause)
        return doubled + plus_one


diamond = Workflow(D(), workflow_id="chaos-diamond", version="1")
DIAMOND_STEPS = ("a", "b", "c", "d")


def diamond_result(n: int) -> int:
    return 2 * n + (n + 1)


# -- hold: a step whose first execution waits for a gate file -----------------------------------


class Hold(Step):
    def run_step(self, n: int, gate: str) -> dict[str, Any]:
        attempt = ledger.record(n, "hold")
        marker = Path(gate + ".first")
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return {"pid": os.getpid(), "attempt": attempt, "first": False}
        wait_for_gate(gate)
        return {"pid": os.getpid(), "attempt": attempt, "first": True}


hold = Workflow(Hold(), workflow_id="chaos-hold", version="1")


# -- poison: a step that kills its own worker -----------------------------------------------------


class Work(Step):
    def run_step(self, n: int, pause: float = 0.02, poison: bool = False) -> int:
        if poison:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(pause)
        return n


poison = Workflow(Work(), workflow_id="chaos-poison", version="1")


# -- unit: one step, claimed and reported through the API ------------------------------------------


class Unit(Step):
    def run_step(self, n: int) -> int:
        return n


unit = Workflow(Unit(), workflow_id="chaos-unit", version="1")


# -- join race: diamonds with an AND join and an OR join --------------------------------------------


def _join_diamond(kind: str) -> Workflow:
    class Top(Step):
        def run_step(self, n: int) -> int:
            return n

    top = Top(name="a")

    class Left(Step):
        def run_step(self, value: Computed[int] = Depends(top)) -> int:
            return value * 2

    class Right(Step):
        def run_step(self, value: Computed[int] = Depends(top)) -> int:
            return value + 1

    left, right = Left(name="b"), Right(name="c")

    if kind == "and":

        class AndJoin(Step):
            def run_step(self, x: Computed[int] = Depends(left), y: Computed[int] = Depends(right)) -> int:
                return x + y

        join: Step = AndJoin(name="d")
    else:

        class OrJoin(Step):
            def run_step(self, first: Computed[int] = Depends([left, right])) -> int:
                return first

        join = OrJoin(name="d")
    return Workflow(join, workflow_id=f"chaos-join-{kind}", version="1")


join_and = _join_diamond("and")
join_or = _join_diamond("or")


# -- quiet chain: two steps that touch no database of their own (connection-count tests) ---------


class First(Step):
    def run_step(self, n: int) -> int:
        return n


first = First()


class Then(Step):
    def run_step(self, value: Computed[int] = Depends(first)) -> int:
        return value + 1


quiet = Workflow(Then(), workflow_id="chaos-quiet", version="1")


# -- flow control: a flaky step retried by the broker, then a step under ConcurrencyLimit(3) --------

#: A step of ``limited`` fails on its first execution when its instance's ``n`` is a multiple of this.
FLAKY_EVERY = 4
#: The retry delay of ``limited``'s flaky step.
FLAKY_RETRY_SECONDS = 2.0
#: At most this many of ``limited``'s narrow step run at once.
NARROW_LIMIT = 3


class Flaky(Step):
    def run_step(self, n: int) -> int:
        attempt = ledger.record(n, "flaky")
        if n % FLAKY_EVERY == 0 and attempt == 1:
            raise RuntimeError(f"flaky failure of instance {n} (first try)")
        return n


flaky = Flaky(policies=[RetryPolicy(max_retries=2, wait=FLAKY_RETRY_SECONDS)])


class Narrow(Step):
    """Records the time it ran, so overlaps can be counted from the ledger."""

    def run_step(self, n: int, pause: float = 0.05, value: Computed[int] = Depends(flaky)) -> int:
        ledger.record(n, "narrow")  # its start: the ledger row's time
        time.sleep(pause)
        ledger.record(n, "narrow_end")
        return value * 2


limited = Workflow(
    Narrow(policies=[ConcurrencyLimit(NARROW_LIMIT)]), workflow_id="chaos-limited", version="1"
)


class Paced(Step):
    def run_step(self, n: int) -> int:
        ledger.record(n, "paced")
        return n


#: At most RATE_N starts per RATE_PER seconds of ``paced``.
RATE_N, RATE_PER = 5, 1.0
paced = Workflow(Paced(policies=[RateLimit(RATE_N, RATE_PER)]), workflow_id="chaos-paced", version="1")
