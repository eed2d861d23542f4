"""ReportBuffer: reports sent together, never lost on a failed send, never later than max_wait."""

from __future__ import annotations

import threading
import time

import pytest

from fuseline import Status, StepReport
from fuseline.engines.reportbuffer import ReportBuffer


def report(n: int) -> StepReport:
    return StepReport("wf", f"instance-{n}", "step", Status.SUCCEEDED, n, attempt=1, version="1")


class Outbox:
    """Where the buffer sends: records each call; fails the calls it is told to."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[list[int]] = []
        self.failures = failures
        self.sent = threading.Event()

    def send(self, reports: list[StepReport]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database said no")
        self.calls.append([r.result for r in reports])
        self.sent.set()


def test_reports_added_before_a_flush_go_in_one_call_in_order() -> None:
    outbox = Outbox()
    buffer = ReportBuffer(outbox.send, max_wait=60)
    for n in range(3):
        buffer.add(report(n))
    buffer.flush()
    buffer.flush()  # nothing left: no call
    buffer.close()
    assert outbox.calls == [[0, 1, 2]]


def test_a_failed_send_keeps_the_reports_for_the_next_flush() -> None:
    outbox = Outbox(failures=1)
    buffer = ReportBuffer(outbox.send, max_wait=60)
    buffer.add(report(0))
    buffer.add(report(1))
    with pytest.raises(RuntimeError):
        buffer.flush()
    buffer.add(report(2))
    buffer.flush()
    buffer.close()
    assert outbox.calls == [[0, 1, 2]]


def test_the_flusher_sends_within_max_wait_without_a_flush() -> None:
    outbox = Outbox()
    buffer = ReportBuffer(outbox.send, max_wait=0.05)
    began = time.monotonic()
    buffer.add(report(7))
    assert outbox.sent.wait(5), "nothing was sent without an explicit flush"
    waited = time.monotonic() - began
    buffer.close()
    assert outbox.calls == [[7]]
    assert waited >= 0.05


def test_a_failure_in_the_flusher_leaves_the_reports_to_the_worker() -> None:
    outbox = Outbox(failures=1)
    buffer = ReportBuffer(outbox.send, max_wait=0.01)
    buffer.add(report(1))
    deadline = time.monotonic() + 5
    while outbox.failures and time.monotonic() < deadline:
        time.sleep(0.005)
    assert outbox.failures == 0, "the flusher never tried"
    time.sleep(0.05)
    assert outbox.calls == []  # it gave up after the failure instead of retrying on its own
    buffer.flush()
    buffer.close()
    assert outbox.calls == [[1]]


def test_take_hands_the_buffered_reports_over_and_leaves_nothing_to_send() -> None:
    outbox = Outbox()
    buffer = ReportBuffer(outbox.send, max_wait=60)
    for n in range(3):
        buffer.add(report(n))
    assert [r.result for r in buffer.take()] == [0, 1, 2]
    assert buffer.take() == []
    buffer.flush()
    buffer.close()
    assert outbox.calls == []


def test_take_waits_for_a_send_in_progress_so_reports_leave_in_order() -> None:
    sending, may_finish = threading.Event(), threading.Event()
    sent: list[list[int]] = []

    def slow_send(reports: list[StepReport]) -> None:
        sending.set()
        assert may_finish.wait(5)
        sent.append([r.result for r in reports])

    buffer = ReportBuffer(slow_send, max_wait=0.01)
    buffer.add(report(1))
    assert sending.wait(5), "the flusher never sent"
    buffer.add(report(2))
    taken: list[list[StepReport]] = []
    taker = threading.Thread(target=lambda: taken.append(buffer.take()))
    taker.start()
    taker.join(0.1)
    assert taker.is_alive(), "take() did not wait for the send in progress"
    may_finish.set()
    taker.join(5)
    buffer.close()
    # report 2 went with the flusher's next send or to the taker: once either way, after report 1
    handed_over = [r.result for batch in taken for r in batch]
    assert [n for batch in sent for n in batch] + handed_over == [1, 2]
