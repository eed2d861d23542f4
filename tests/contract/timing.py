"""Waiting on the broker's clock: polling claims before and after a time, reading times in details.

No test asserts how fast anything is. "Not before" is checked by claiming
over and over until the time (with a small allowance for the database's
clock reading a little ahead of this process's); "after" by claiming until
a step comes, with a generous deadline.
"""

from __future__ import annotations

import time
from datetime import datetime

from fuseline import StepAssignment
from fuseline.broker import Broker

#: A claim this much before its time still counts as on time (clock reads, rounding).
EARLY_ALLOWANCE = 0.25
#: Longest wait for something due: far beyond any delay the tests use.
DEADLINE = 20.0
POLL = 0.05


def claim_not_before(broker: Broker, worker_id: str, not_before: float) -> StepAssignment:
    """Claim again and again: nothing may come before ``not_before`` (``time.monotonic()``), and
    something must come after it (within DEADLINE seconds); returns that claim.

    A claim is early only if it returned before the time (less the allowance):
    one that returned later may have run on time however long it took.
    """
    deadline = max(time.monotonic(), not_before) + DEADLINE
    while time.monotonic() < deadline:
        claimed = broker.get_step(worker_id)
        if claimed is not None:
            early = not_before - time.monotonic()
            assert early < EARLY_ALLOWANCE, f"claimed {claimed.step_name!r} {early:.2f} s before its time"
            return claimed
        time.sleep(POLL)
    raise AssertionError(f"nothing became claimable within {DEADLINE} s of its time")


def claim_when_due(broker: Broker, worker_id: str) -> StepAssignment:
    """Claim until a step comes, failing after DEADLINE seconds."""
    return claim_not_before(broker, worker_id, time.monotonic())


def time_after(prefix: str, detail: str) -> datetime:
    """The ISO time that follows ``prefix`` in an explanation's detail (to the next ';' or the end)."""
    assert prefix in detail, f"{prefix!r} not in {detail!r}"
    text = detail.split(prefix, 1)[1].split(";", 1)[0].strip()
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, f"{text!r} has no time zone"
    return moment
