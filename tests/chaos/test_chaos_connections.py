"""Connection exhaustion: more workers than the server has connections for.

Eight ``fuseline worker run`` processes with default settings start at once
against a server with ``max_connections = 12``. Each process used to hold
some connections (its kept hot-path connection, its LISTEN session, its
pool) while waiting for one more, so every claim, report and heartbeat
failed with "too many clients already" and nothing ran for minutes: a
livelock. A worker process now opens its whole connection budget at once or
gives back what it got and retries later (with jitter), so the workers that
hold a budget run and the others join as connections free up.

Pass: every instance SUCCEEDED well within the limit, every worker exited 0
(none crash-looped or gave up), each step accepted once, ``verify()`` clean.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from tests.chaos import flows
from tests.chaos.conftest import _test_engine, migrated_postgres
from tests.chaos.history import assert_each_step_accepted_once, assert_invariants, load_history
from tests.chaos.scale import pick, report
from tests.chaos.server import OwnServer
from tests.chaos.workers import Workers, wait_for
from tests.conftest import url_text

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 12
WORKERS = 8
INSTANCES = pick(300, 2_000)
DRAIN_LIMIT_SECONDS = pick(180.0, 600.0)


@pytest.fixture
def crowded_server() -> Iterator[OwnServer]:
    server = OwnServer.start_new(max_connections=MAX_CONNECTIONS)
    yield server
    server.close()


def test_more_workers_than_connections_all_finish_the_work(crowded_server: OwnServer, tmp_path: Path) -> None:
    url = url_text(migrated_postgres(crowded_server))
    broker = SqlBroker(url, listen=False, connections=1)
    try:
        ids = broker.dispatch_many(flows.quiet.to_schema(), [{"n": n} for n in range(INSTANCES)])
    finally:
        broker.close()

    began = time.monotonic()
    with Workers(tmp_path / "workers", url, "tests.chaos.flows:quiet", "--burst") as fleet:
        for _ in range(WORKERS):
            fleet.start()
        wait_for(lambda: not fleet.alive(), DRAIN_LIMIT_SECONDS, "every burst worker to finish")
        seconds = time.monotonic() - began
        codes = [w.proc.returncode for w in fleet.started]
        waited = sum(
            ("database busy" in w.stderr or "database unavailable" in w.stderr) for w in fleet.started
        )
        logs = fleet.logs()

    assert codes == [0] * WORKERS, logs
    assert "Traceback" not in logs, logs
    engine = _test_engine(url)
    try:
        history = load_history(engine, ledger=False)
        assert_each_step_accepted_once(history, ids, ("first", "then"))
        assert_invariants(engine)
        results = {history.instance_states[i] for i in ids}  # ids are canonical already
        assert {status for status, _ in results} == {Status.SUCCEEDED.value}
        assert sorted(int(result) for _, result in history.instance_states.values()) == [  # type: ignore[arg-type]
            n + 1 for n in range(INSTANCES)
        ]
    finally:
        engine.dispose()
    report(
        "connections",
        {"workers": WORKERS, "max_connections": MAX_CONNECTIONS, "instances": INSTANCES,
         "seconds": round(seconds, 1), "workers_that_waited": waited},
    )  # fmt: skip
