"""``SlotReporter``: a multi-slot worker's reports, sent from a thread of their own.

With one slot a report rides with the next claim (``report_and_claim``).
With a hundred slots, reporting a batch costs several times what claiming
one does (each report writes its step, its instance and the events), and
slots that freed meanwhile would wait for both in turn. So the loop only
claims, and this thread sends: whatever finished while one batch was being
sent goes in the next, so batches grow with the load and nothing waits on
a timer. The broker connections allow it: a broker keeps one connection
for the loop and one more for heartbeats and reports.

After each delivered batch ``wake`` is called: the reports may have queued
successors, which the loop then claims without waiting for a poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..broker.base import StepReport

logger = logging.getLogger("fuseline.worker")

#: Most reports sent in one call; a larger backlog goes out as several batches, one after
#: another. PostgreSQL's one-statement batch report costs less per report as the batch grows
#: (one worker alone: 0.38 ms per report in batches of 25, 0.21 ms in batches of 90), as long
#: as its plan stays linear in the batch (``pg_statements.steps_succeed_batch``); a cap keeps
#: the row locks of one batch short for the heartbeats that wait on them. With 4 x 100 slots
#: on 10,000 plain steps, 100 drained in 3.9-4.1 s where 25 took 5.4-5.6 s.
MAX_BATCH = 100


class SlotReporter:
    """Sends reports in batches from a daemon thread, one batch at a time, in order.

    ``send`` never gives up on a database outage (the worker's
    ``_send_reports``); any other error it raises stops the thread with the
    batch kept, and is available as :attr:`failure`. The loop then sends the
    kept reports itself (:meth:`recover`) and raises if that fails again, as
    the single-slot worker does with its report buffer.
    """

    def __init__(self, send: Callable[[list[StepReport]], None], wake: Callable[[], None]) -> None:
        self._send = send
        self._wake = wake
        self._changed = threading.Condition()  # guards the fields below
        self._waiting: list[StepReport] = []
        self._sending = False
        self._closed = False
        self._delivered = 0
        self.failure: Exception | None = None
        self._thread = self._start()

    def add(self, reports: list[StepReport]) -> None:
        with self._changed:
            self._waiting.extend(reports)
            self._changed.notify()

    def progress(self) -> tuple[bool, int]:
        """Whether the thread has nothing left to do (nothing waits, nothing is being sent, or it
        stopped on a failure), and how many batches it delivered so far."""
        with self._changed:
            done = (not self._waiting or self.failure is not None) and not self._sending
            return done, self._delivered

    def take(self) -> list[StepReport]:
        """Wait for a batch being sent, then remove and return the reports not sent yet."""
        with self._changed:
            while self._sending:
                self._changed.wait()
            reports, self._waiting = self._waiting, []
            return reports

    def close(self, timeout: float | None = None) -> list[StepReport]:
        """Stop the thread after the batch in flight (waiting at most ``timeout`` for it); returns
        the reports it did not send."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout)
        with self._changed:
            reports, self._waiting = self._waiting, []
            return reports

    def recover(self) -> list[StepReport]:
        """After a failure: the reports kept, for the loop to send itself; a new thread sends the
        next ones."""
        self._thread.join()
        with self._changed:
            reports, self._waiting = self._waiting, []
            self.failure = None
        self._thread = self._start()
        return reports

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="fuseline-slot-reports", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                self._sending = True
            failed = False
            try:
                self._send(batch)
            except Exception as exc:  # kept: the loop sends them itself once its slots are done
                logger.warning("sending step reports failed; the worker loop sends them itself: %s", exc)
                self.failure, failed = exc, True
            with self._changed:
                if failed:
                    self._waiting[:0] = batch
                else:
                    self._delivered += 1
                self._sending = False
                self._changed.notify_all()
            self._wake()
            if failed:
                return
