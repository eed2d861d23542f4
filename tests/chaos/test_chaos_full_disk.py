"""Chaos (issue 16 case 4): the database's disk fills under load, then space returns.

The test owns a PostgreSQL server (``own_server``) and a 64 MiB tmpfs it
mounts itself; a tablespace there holds the whole database (fuseline's
tables and indexes), while the server's own files and WAL stay where they
were, so PostgreSQL itself keeps running, as it does when a data volume
separate from the WAL fills. The ledger is moved out of the small disk
(it must record every execution, full or not). Workers drain diamonds that
a dispatcher adds at a steady rate, plus a backlog dispatched at once whose
first steps wait until the disk is full; then a filler file takes every
free byte of the tmpfs, is kept a few seconds, and is deleted.

Pass: while the disk is full a dispatch fails with one clear line (its
error class and "No space left on device"); the workers stay up, log the
failure and retry (no crash loop, no restart), and claim again once the
filler is gone; every instance whose dispatch returned an id SUCCEEDED, each
step accepted once, at least one ledger row per step, ``verify()`` clean.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from fuseline.broker.sql import SqlBroker
from fuseline.errors import DatabaseError
from tests.chaos import flows
from tests.chaos.conftest import ChaosDatabase, _test_engine
from tests.chaos.history import (
    assert_each_step_accepted_once,
    assert_invariants,
    create_ledger,
    db_now,
    ledger_by_step,
    load_history,
)
from tests.chaos.scale import FULL_DISK, report
from tests.chaos.server import SYSTEM_USER, OwnServer
from tests.chaos.workers import REPOSITORY, SCRIPT, Workers, wait_for, worker_env
from tests.conftest import url_text

pytestmark = pytest.mark.slow

DISK_BYTES = 64 * 1024 * 1024
PAUSE_SECONDS = 0.01
NO_SPACE = "No space left on device"
RETRY_DELAY = re.compile(r"retrying in ([0-9.]+)s")
#: The line that ends a run of failed attempts, with how many there were (engines/retry.py).
FAILED_RUN = re.compile(r"after (\d+) (?:cancelled or )?failed attempts")
LOG_RECORD = re.compile(r"\n(?=\d{4}-\d\d-\d\d )")
#: Seconds from the filler's deletion to the first step accepted, at most (the longest back-off
#: of a worker is a few seconds).
RESUME_WITHIN_SECONDS = 15.0
#: The ``n`` of the backlog dispatched just before the disk fills (the dispatcher counts from 0).
BACKLOG_FIRST_N = 1_000_000


def fuseline_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT), *args]
    return subprocess.run(
        command, cwd=REPOSITORY, env=worker_env(url), capture_output=True, text=True, timeout=60
    )


@contextlib.contextmanager
def small_disk(folder: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted at ``folder``, owned by the server's system user.

    Not under pytest's tmp_path: the server's user must be able to reach it.
    """
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): {mounted.stderr}"
    try:
        if SYSTEM_USER is not None:
            shutil.chown(folder, SYSTEM_USER, SYSTEM_USER)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            folder.rmdir()


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full (megabytes, then pages); returns the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as filler:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            with contextlib.suppress(OSError):  # ENOSPC ends each size; any other error shows below
                while True:
                    written += filler.write(chunk)
    free = os.statvfs(path.parent)
    assert free.f_bavail * free.f_frsize < 8192, f"the disk still has {free.f_bavail} blocks free"
    return written


class Dispatcher(threading.Thread):
    """Dispatches diamonds at a steady rate; a failed dispatch is counted, its error kept, never retried."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.rate = url, rate
        self.ids_by_n: dict[int, str] = {}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        broker = SqlBroker(self.url, listen=False)
        began, n = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                self.stop.wait(max(0.0, began + n / self.rate - time.monotonic()))
                try:
                    self.ids_by_n[n] = flows.diamond.dispatch(broker, {"n": n, "pause": PAUSE_SECONDS})
                except DatabaseError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                n += 1
        except BaseException as exc:
            self.error = exc
        finally:
            broker.close()


@pytest.fixture
def full_disk_db(own_server: OwnServer) -> Iterator[tuple[ChaosDatabase, Path]]:
    """A migrated database whose default tablespace is on a small disk of its own; yields it and the disk."""
    name = f"fuseline_disk_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(own_server.admin_url, isolation_level="AUTOCOMMIT")
    with small_disk(Path(f"/tmp/{name}")) as disk:
        tablespace = disk / "pg"
        tablespace.mkdir()
        if SYSTEM_USER is not None:
            shutil.chown(tablespace, SYSTEM_USER, SYSTEM_USER)
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE TABLESPACE {name} LOCATION '{tablespace}'")
                conn.exec_driver_sql(f"CREATE DATABASE {name} TABLESPACE {name}")
            url = own_server.admin_url.set(database=name)
            text = url_text(url)
            upgraded = fuseline_cli(text, "db", "upgrade")
            assert upgraded.returncode == 0, upgraded.stderr
            engine = _test_engine(url)
            create_ledger(engine)
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE chaos_ledger SET TABLESPACE pg_default")
            try:
                yield ChaosDatabase(text, engine), disk
            finally:
                engine.dispose()
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                conn.exec_driver_sql(f"DROP TABLESPACE IF EXISTS {name}")
            admin.dispose()


def test_workers_pause_while_the_database_disk_is_full_and_resume_when_space_returns(
    full_disk_db: tuple[ChaosDatabase, Path], tmp_path: Path
) -> None:
    (db, disk), cfg = full_disk_db, FULL_DISK
    filler = disk / "filler"
    options = ("--lease-seconds", str(cfg.lease_seconds), "--poll-interval", "0.2")
    with Workers(tmp_path / "workers", db.url, "tests.chaos.flows:diamond", *options) as fleet:
        for _ in range(cfg.workers):
            fleet.start()
        for worker in fleet.started:
            worker.wait_for_log("started (pid")
        pids = [w.pid for w in fleet.started]
        dispatcher = Dispatcher(db.url, cfg.rate)
        dispatcher.start()
        time.sleep(cfg.before_seconds)
        # A backlog whose first steps wait for a gate opened only once the disk is full: the
        # workers cannot drain it beforehand (they did on a loaded machine, and then never wrote
        # again), so their claims and reports of it must find space on the full disk.
        gate = tmp_path / "backlog-gate"
        params = {"pause": PAUSE_SECONDS, "gate": str(gate)}
        broker = SqlBroker(db.url, listen=False)
        try:
            for n in range(BACKLOG_FIRST_N, BACKLOG_FIRST_N + cfg.backlog):
                dispatcher.ids_by_n[n] = flows.diamond.dispatch(broker, {"n": n, **params})
        finally:
            broker.close()
        before_full = len(dispatcher.ids_by_n)
        filled = fill(filler)
        full_at = time.monotonic()
        gate.touch()
        wait_for(lambda: dispatcher.failures, 30, "a dispatch to fail on the full disk")
        wait_for(lambda: NO_SPACE in fleet.logs(), 30, "a worker to meet the full disk")
        time.sleep(cfg.full_seconds)
        broken = fleet.unexpected_exits()
        assert not broken, f"a worker exited on the full disk:\n{fleet.logs(broken)}"
        filler.unlink()
        freed_at, freed_db = time.monotonic(), db_now(db.engine)
        time.sleep(cfg.after_seconds)
        dispatcher.stop.set()
        dispatcher.join(30)
        assert dispatcher.error is None, repr(dispatcher.error)
        ids_by_n = dict(dispatcher.ids_by_n)
        wait_for(lambda: all_succeeded(db.engine, len(ids_by_n)), 60, "every instance to succeed", 0.2)
        broken = fleet.unexpected_exits()
        assert not broken, f"a worker exited:\n{fleet.logs(broken)}"
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}, f"graceful stops failed: {codes}\n{fleet.logs()}"
        logs = [w.stderr for w in fleet.started]
    assert [w.pid for w in fleet.started] == pids, "a worker was started again"
    assert not any("Traceback" in log for log in logs), "\n".join(logs)

    history = load_history(db.engine)
    ids = list(ids_by_n.values())
    assert_each_step_accepted_once(history, ids, flows.DIAMOND_STEPS)
    ledger_by_step(history, ids_by_n, flows.DIAMOND_STEPS)
    assert_invariants(db.engine)
    verified = fuseline_cli(db.url, "db", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    records = [record for log in logs for record in LOG_RECORD.split(log)]  # a log record may span lines
    # A claim or report retried with back-off ("retrying in"), or a heartbeat put off to the next
    # beat: which ones hit the full disk depends on which writes still find room in their pages.
    retries = [record for record in records if NO_SPACE in record and "retrying" in record]
    delays = [float(m.group(1)) for m in map(RETRY_DELAY.search, retries) if m]
    longest_run = max((int(n) for log in logs for n in FAILED_RUN.findall(log)), default=0)
    first_accepted_after = min(e.at for e in history.of("succeeded") if e.at > freed_db)
    errors = Counter(f.split(":", 1)[0] for f in dispatcher.failures)
    report(
        "full_disk",
        {
            "workers": cfg.workers,
            "disk_mib": DISK_BYTES >> 20,
            "filler_mib": round(filled / (1 << 20), 1),
            "full_s": round(freed_at - full_at, 2),
            "dispatched_before_full": before_full,
            "dispatched": len(ids),
            "failed_dispatches": len(dispatcher.failures),
            "dispatch_error": dispatcher.failures[0].split(NO_SPACE)[0].rsplit(": ", 1)[-1] + NO_SPACE,
            "dispatch_error_classes": dict(errors),
            "workers_that_waited": sum(NO_SPACE in log for log in logs),
            "worker_retries": len(retries),
            "longest_retry_delay_s": max(delays, default=0.0),
            "longest_failed_run": longest_run,
            "first_accepted_after_freed_s": round((first_accepted_after - freed_db).total_seconds(), 3),
        },
    )
    # dispatch fails with one clear line naming the cause; callers may retry a DatabaseUnavailable
    assert set(errors) == {"DatabaseUnavailable"}, errors
    assert all(NO_SPACE in f and "\n" not in f for f in dispatcher.failures), dispatcher.failures[0]
    # the workers waited with a growing, bounded back-off, not a crash loop or a busy loop
    assert sum(NO_SPACE in log for log in logs) >= 1
    per_worker = [sum(NO_SPACE in r and "retrying in" in r for r in LOG_RECORD.split(log)) for log in logs]
    assert max(per_worker) <= 30 + 2 * cfg.full_seconds, per_worker
    assert retries, "no worker met the full disk"
    # Several back-offs in a row grow past a second: the fifth pause of one run of failures is
    # 2 s nominal, at least 1 s jittered. Counted per run (its end logs how many attempts
    # failed), not over all workers: three workers retrying three times each never get there.
    if longest_run >= 5:
        assert max(delays) >= 1.0, (longest_run, delays)
    assert (first_accepted_after - freed_db).total_seconds() < RESUME_WITHIN_SECONDS


def all_succeeded(engine: sa.Engine, expected: int) -> bool:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM fuseline_instances GROUP BY 1")).all()
    counts = dict(rows)
    return set(counts) == {"SUCCEEDED"} and counts["SUCCEEDED"] == expected
