"""Flow control (issue 11): concurrency limits, rate limits and queues, counted at claim time.

A claim passes over the steps a limit holds back; they stay QUEUED in their
place and other steps are claimed meanwhile. Limits count live state only
(leases that have not expired, instances in progress, claims in the
window), so a dead worker's slot frees when its lease expires.
"""

from __future__ import annotations

import time

from fuseline import Status
from fuseline.clients import LocalBrokerClient
from fuseline.engines import Worker

from . import scheduled as sc
from . import workflows as wf
from .support import claim, register, report, states, succeed
from .timing import claim_not_before

LEASE = 1.0  # claims are the only heartbeats here: see test_retries.py
PAST_LEASE = 1.3


def test_a_step_concurrency_limit_holds_the_step_back_while_its_slots_are_taken(broker):
    first, second = register(broker, sc.LIMITED), register(broker, sc.LIMITED)
    running = sc.LIMITED.dispatch(broker, {"customer": "a"})
    waiting = sc.LIMITED.dispatch(broker, {"customer": "b"})
    held = claim(broker, first)

    assert broker.get_step(second) is None
    assert states(broker.get_instance(waiting)) == {"limited": Status.QUEUED}

    succeed(broker, first, held, "a")
    assert held.instance_id == running
    assert claim(broker, second).instance_id == waiting


def test_steps_a_limit_holds_back_keep_their_place_while_other_steps_are_claimed(broker):
    worker = register(broker, sc.LIMITED, wf.SINGLE)
    running = sc.LIMITED.dispatch(broker, {"customer": "a"})
    waiting = sc.LIMITED.dispatch(broker, {"customer": "b"})
    free = wf.SINGLE.dispatch(broker, {"x": 1})
    held = claim(broker, worker)

    assert claim(broker, worker).instance_id == free
    succeed(broker, worker, held, "a")
    later = wf.SINGLE.dispatch(broker, {"x": 2})

    assert [claim(broker, worker).instance_id for _ in range(2)] == [waiting, later]
    assert held.instance_id == running


def test_a_keyed_concurrency_limit_counts_each_value_of_its_input_apart(broker):
    worker = register(broker, sc.LIMITED_PER_CUSTOMER)
    a1 = sc.LIMITED_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    a2 = sc.LIMITED_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    b1 = sc.LIMITED_PER_CUSTOMER.dispatch(broker, {"customer": "b"})

    held = [claim(broker, worker) for _ in range(2)]
    assert [a.instance_id for a in held] == [a1, b1]
    assert broker.get_step(worker) is None

    succeed(broker, worker, held[0], "a")
    assert claim(broker, worker).instance_id == a2


def test_a_dead_workers_concurrency_slot_frees_when_its_lease_expires(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    lost, rescuer = register(broker, sc.LIMITED), register(broker, sc.LIMITED)
    first = sc.LIMITED.dispatch(broker, {"customer": "a"})
    sc.LIMITED.dispatch(broker, {"customer": "b"})
    claim(broker, lost)  # and never heard of again
    assert broker.get_step(rescuer) is None

    time.sleep(PAST_LEASE)
    taken = claim(broker, rescuer)

    assert (taken.instance_id, taken.attempt) == (first, 2)  # lost work first, at its old place
    assert broker.get_step(rescuer) is None  # the slot is the rescuer's now


def test_a_workflow_concurrency_limit_holds_new_instances_back_until_one_finishes(broker):
    worker = register(broker, sc.ONE_AT_A_TIME)
    first = sc.ONE_AT_A_TIME.dispatch(broker, {"customer": "a"})
    second = sc.ONE_AT_A_TIME.dispatch(broker, {"customer": "b"})

    opened = claim(broker, worker)
    assert broker.get_step(worker) is None
    succeed(broker, worker, opened, "a")
    closed = claim(broker, worker)  # the instance in progress goes on
    assert (closed.instance_id, closed.step_name) == (first, "close")
    assert broker.get_step(worker) is None
    succeed(broker, worker, closed, "closed")

    assert claim(broker, worker).instance_id == second


def test_a_keyed_workflow_concurrency_limit_counts_each_value_of_its_input_apart(broker):
    worker = register(broker, sc.ONE_PER_CUSTOMER)
    a1 = sc.ONE_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    sc.ONE_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    b1 = sc.ONE_PER_CUSTOMER.dispatch(broker, {"customer": "b"})

    assert [claim(broker, worker).instance_id for _ in range(2)] == [a1, b1]
    assert broker.get_step(worker) is None


def test_a_rate_limit_allows_n_claims_in_any_window_of_its_seconds(broker):
    worker = register(broker, sc.RATED)
    ids = [sc.RATED.dispatch(broker, {"customer": c}) for c in "abc"]
    window_opened = time.monotonic()
    for _ in range(2):
        succeed(broker, worker, claim(broker, worker), "done")  # finishing frees no start

    third = claim_not_before(broker, worker, window_opened + sc.PAUSE)

    assert third.instance_id == ids[2]


def test_a_keyed_rate_limit_counts_each_value_of_its_input_apart(broker):
    worker = register(broker, sc.RATED_PER_CUSTOMER)
    a1 = sc.RATED_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    sc.RATED_PER_CUSTOMER.dispatch(broker, {"customer": "a"})
    b1 = sc.RATED_PER_CUSTOMER.dispatch(broker, {"customer": "b"})

    assert [claim(broker, worker).instance_id for _ in range(2)] == [a1, b1]
    assert broker.get_step(worker) is None


def test_the_claim_of_a_retry_counts_against_a_rate_limit(broker):
    worker = register(broker, sc.RATED_RETRY)
    instance_id = sc.RATED_RETRY.dispatch(broker, {"customer": "a"})

    broker.report_step(worker, report(claim(broker, worker), Status.FAILED, error="boom"))

    assert broker.get_step(worker) is None
    step = broker.get_instance(instance_id).step("call")
    assert (step.state, step.retries) == (Status.QUEUED, 1)


def test_a_worker_claims_only_the_steps_of_its_queues(broker):
    schema = sc.RENDER.to_schema()
    cpu = broker.register_worker([schema], queues=["default"])
    gpu = broker.register_worker([schema], queues=["gpu"])
    instance_id = sc.RENDER.dispatch(broker, {"x": 1})

    assert broker.get_step(gpu) is None
    succeed(broker, cpu, claim(broker, cpu), 1)
    assert broker.get_step(cpu) is None

    render = claim(broker, gpu)
    assert (render.instance_id, render.step_name) == (instance_id, "render")


def test_a_worker_that_names_no_queue_serves_every_queue_of_its_workflows(broker):
    worker = register(broker, sc.RENDER)
    sc.RENDER.dispatch(broker, {"x": 1})

    succeed(broker, worker, claim(broker, worker), 1)

    assert claim(broker, worker).step_name == "render"


def test_the_worker_loop_registers_with_its_queues(broker):
    instance_id = sc.RENDER.dispatch(broker, {"x": 1})
    cpu = Worker(LocalBrokerClient(broker), [sc.RENDER], queues=["default"])
    gpu = Worker(LocalBrokerClient(broker), [sc.RENDER], queues=["gpu"])
    try:
        assert (gpu.work(), cpu.work(), cpu.work(), gpu.work()) == (0, 1, 0, 1)
    finally:
        cpu.close()
        gpu.close()

    info = broker.get_instance(instance_id)
    assert (info.status, info.result) == (Status.SUCCEEDED, "rendered")
