"""The end of a Map whose items are accepted without their instance's lock (PostgreSQL's
one-statement item reports): the last item to commit completes the map, even when two finish
at the same moment, and a map whose last reporter died before its check is completed by the
timers of any running worker."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import steps
from fuseline.engines.assignment import run_assignment
from tests.contract import shapes
from tests.contract.support import claim, register


def _fanned_out(broker: SqlBroker, worker: str, n: int) -> str:
    instance_id = shapes.MAPPED.dispatch(broker, {"n": n})
    shapes.run_all(broker, worker, [shapes.MAPPED], limit=1)  # rows: fans out
    return instance_id


def test_two_last_items_finishing_together_complete_the_map_once(broker: SqlBroker) -> None:
    workers = [register(broker, shapes.MAPPED) for _ in range(2)]
    for _ in range(15):
        instance_id = _fanned_out(broker, workers[0], 2)
        held = [claim(broker, w) for w in workers]
        reports = [run_assignment(shapes.MAPPED, a, policy_retries=False).report for a in held]
        start = threading.Barrier(2)

        def send(worker: str, report: object, start: threading.Barrier = start) -> None:
            start.wait()
            broker.report_step(worker, report)  # type: ignore[arg-type]

        threads = [threading.Thread(target=send, args=pair) for pair in zip(workers, reports, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        info = broker.get_instance(instance_id)
        assert info.step("squares").state is Status.SUCCEEDED, info  # completed by a reporter, not later
        assert info.step("squares").result == [0, 1]
        succeeded = [
            e
            for e in broker.instance_events(instance_id)
            if e.kind == "succeeded" and e.step_name == "squares"
        ]
        assert len(succeeded) == 1
        shapes.run_all(broker, workers[0], [shapes.MAPPED])
        assert broker.get_instance(instance_id).status is Status.SUCCEEDED


def test_a_map_whose_last_reporter_died_before_its_check_is_completed_by_the_timers(
    broker: SqlBroker,
) -> None:
    worker = register(broker, shapes.MAPPED)
    instance_id = _fanned_out(broker, worker, 2)
    held = [claim(broker, worker), claim(broker, worker)]
    with broker.engine.begin() as conn:  # what the item statements committed; no check followed
        for a in held:
            conn.execute(
                sa.update(steps)
                .where(steps.c.instance_id == instance_id, steps.c.name == a.step_name)
                .values(state="SUCCEEDED", result=str(a.payload["item"] ** 2), worker_id=None)
            )

    deadline = time.monotonic() + 15
    while broker.get_instance(instance_id).status is Status.RUNNING and time.monotonic() < deadline:
        shapes.run_all(broker, worker, [shapes.MAPPED])  # each claim lets the timers look
        time.sleep(0.1)
    done = broker.get_instance(instance_id)
    assert (done.status, done.result) == (Status.SUCCEEDED, {"values": [0, 1], "sum": 1})
