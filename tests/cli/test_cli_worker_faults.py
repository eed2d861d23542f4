"""``worker run`` when the broker refuses the worker: for good (exit 1), or as dead (it goes on).

A heartbeat that fails permanently (here: the worker's role loses the right
to update ``fuseline_workers`` while a step runs) must not leave a worker
running whose leases lapse; it finishes and reports the step in hand, says
why it stops, and exits 1. A worker the broker listed dead (it was
SIGSTOPped for longer than twice its lease) registers again and goes on.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, wait_for
from tests.conftest import url_text

NAP = 2.0


@pytest.fixture
def worker_role(postgres_url: URL) -> Iterator[tuple[URL, str]]:
    """A login role with data privileges on the test database: (its URL, its name); dropped after."""
    role = f"fl_worker_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
            conn.exec_driver_sql(
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
            )
            conn.exec_driver_sql(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        yield postgres_url.set(username=role, password=None), role
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


def test_a_heartbeat_refused_for_good_stops_the_worker_after_its_step_with_exit_1(
    worker_role: tuple[URL, str], postgres_url: URL, tmp_path: Path
) -> None:
    role_url, role = worker_role
    cli = Cli("postgres", tmp_path, url_text(role_url))
    try:
        instance_id = cli.submit("flows:sleepy", "--input", f"seconds={NAP}", "--input", "log=nap.log")
        worker = cli.start_worker("flows:sleepy", "--lease-seconds", "3")
        wait_for(lambda: (tmp_path / "nap.log").exists(), 20, "the step to start")

        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'REVOKE UPDATE ON fuseline_workers FROM "{role}"')
        finally:
            admin.dispose()

        assert worker.wait(timeout=NAP + 20) == 1, worker.stderr
        stderr = worker.stderr
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1, stderr
        assert "permission denied" in errors[0] and "fuseline_workers" in errors[0], stderr
        assert f"instance={instance_id} step=nap attempt=1 state=SUCCEEDED" in stderr
        shown = Cli("postgres", tmp_path, url_text(postgres_url)).show(instance_id)
        assert (shown["status"], shown["result"]) == ("SUCCEEDED", f"slept {NAP}")
    finally:
        cli.kill_all()


@on_backend("sqlite")  # the heartbeat test above is PostgreSQL's; the broker side is the contract's
def test_a_worker_stopped_past_twice_its_lease_registers_again_and_goes_on(cli: Cli) -> None:
    """SIGSTOP: no heartbeat, so the broker lists the worker dead and refuses its claims and
    heartbeats; after SIGCONT the worker registers under a new id and runs what is queued."""
    lease = 1.0  # dead after 2 s without a heartbeat: a loaded machine does not get there by itself
    worker = cli.start_worker("flows:diamond", "--lease-seconds", str(lease))
    first = wait_for(lambda: cli.json("workers", "list"), 20, "the worker to be listed")
    assert len(first) == 1

    worker.signal(signal.SIGSTOP)
    try:
        time.sleep(3 * lease)
    finally:
        worker.signal(signal.SIGCONT)
    worker.wait_for_log("registered again as worker")
    instance_id = cli.submit("flows:diamond", "--input", "x=1", "--input", "y=2")
    cli.wait_for_status([instance_id], "SUCCEEDED", 30, "the instance to succeed")

    listed = {w["worker_id"]: (w["state"], w["pid"]) for w in cli.json("workers", "list")}
    old_id = first[0]["worker_id"]
    (new_id,) = set(listed) - {old_id}
    assert listed[new_id] == ("alive", worker.pid)
    assert listed[old_id][1] == worker.pid  # its state depends on the lease `workers list` assumes
    assert old_id in worker.stderr and new_id in worker.stderr
    assert cli.show(instance_id)["result"] == (1 + 2) * 2 + (1 + 2 + 1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.stderr
    assert "Traceback" not in worker.stderr
