"""A worker listed dead cannot claim or beat until it registers again; a claiming worker is alive.

A worker is dead when it sent no heartbeat (and made no claim) for twice
its lease, or was stopped. Its leases have lapsed by then, so another worker
may already run its steps: letting it claim again under the same id, or
revive itself with a heartbeat, would hand work to a process the broker
itself lists as gone. Leases here are 1 s: dead after 2 s, so a loaded
machine's stall of a second between two beats does not list a beating
worker dead.
"""

from __future__ import annotations

import time

import pytest

from fuseline import Status
from fuseline.errors import WorkerExpired

from . import workflows as wf
from .support import claim, register, succeed

LEASE = 1.0
PAST_TWO_LEASES = 2.3


def alive(broker, worker_id: str) -> bool:
    (info,) = [w for w in broker.list_workers() if w.worker_id == worker_id]
    return info.alive


def test_a_worker_silent_for_two_leases_is_refused_until_it_registers_again(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    silent = register(broker, wf.SINGLE)
    instance_id = wf.SINGLE.dispatch(broker, {"x": 4})

    time.sleep(PAST_TWO_LEASES)

    assert not alive(broker, silent)
    with pytest.raises(WorkerExpired):
        broker.get_step(silent)
    with pytest.raises(WorkerExpired):
        broker.get_steps(silent, 3)
    with pytest.raises(WorkerExpired):  # a heartbeat does not bring it back either
        broker.keep_alive(silent)
    assert not alive(broker, silent)
    assert broker.get_instance(instance_id).step("double").state is Status.QUEUED  # nothing was taken

    again = register(broker, wf.SINGLE)
    assignment = claim(broker, again)
    succeed(broker, again, assignment, 8)
    assert broker.get_instance(instance_id).result == 8


def test_a_stopped_worker_cannot_claim(broker):
    worker = register(broker, wf.SINGLE)
    wf.SINGLE.dispatch(broker, {"x": 1})
    broker.deregister_worker(worker)

    with pytest.raises(WorkerExpired):
        broker.get_step(worker)


def test_claims_keep_a_worker_without_heartbeats_alive(make_broker):
    """The worker guide's loop sends no heartbeat: its claims are its sign of life."""
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, wf.SINGLE)
    deadline = time.monotonic() + PAST_TWO_LEASES + LEASE
    while time.monotonic() < deadline:
        assert broker.get_step(worker) is None
        time.sleep(LEASE / 3)
    assert alive(broker, worker)
    wf.SINGLE.dispatch(broker, {"x": 2})
    assert claim(broker, worker).step_name == "double"


def test_heartbeats_keep_a_worker_alive(make_broker):
    broker = make_broker(lease_seconds=LEASE)
    worker = register(broker, wf.SINGLE)
    deadline = time.monotonic() + PAST_TWO_LEASES + LEASE
    while time.monotonic() < deadline:
        broker.keep_alive(worker)
        time.sleep(LEASE / 3)
    assert alive(broker, worker)
    assert broker.get_step(worker) is None
