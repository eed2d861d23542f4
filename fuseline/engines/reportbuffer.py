"""Reports of finished steps waiting to be sent together (prefetching workers)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..broker.base import StepReport

logger = logging.getLogger("fuseline.worker")


class ReportBuffer:
    """Collects reports and sends them in one call, at most ``max_wait`` seconds after the first.

    The worker flushes when its batch is done; a flusher thread flushes in
    the meantime, so a report waits no longer than ``max_wait`` even while
    the worker runs a long step (its successors are not held back, and a
    crash loses little). Sends happen one at a time and in order. If a send
    from the flusher thread fails, the reports go back to the front of the
    buffer, the thread stops, and the worker's next flush sends them (and
    raises, if it fails again). ``close()`` stops the thread; call
    ``flush()`` (or ``take()`` and send what it returns) before it.
    """

    def __init__(self, send: Callable[[list[StepReport]], None], max_wait: float) -> None:
        self._send = send
        self._max_wait = max_wait
        self._changed = threading.Condition()  # guards the fields below
        self._reports: list[StepReport] = []
        self._first_at: float | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sending = threading.Lock()  # one send at a time

    def add(self, report: StepReport) -> None:
        with self._changed:
            self._reports.append(report)
            if self._first_at is None:
                self._first_at = time.monotonic()
                self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fuseline-reports", daemon=True)
                self._thread.start()

    def take(self) -> list[StepReport]:
        """Remove and return the buffered reports, for the worker to send with its next claim.

        Waits for a send in progress, so reports leave in the order they came.
        Call it from the thread that adds reports.
        """
        if self._thread is None and not self._reports:
            return []  # nothing was ever buffered: no lock to take (the no-prefetch hot path)
        with self._sending, self._changed:
            reports, self._reports, self._first_at = self._reports, [], None
            return reports

    def flush(self) -> None:
        """Send what is buffered now (errors propagate: the worker decides)."""
        with self._sending:
            with self._changed:
                reports, self._reports, self._first_at = self._reports, [], None
            if not reports:
                return
            try:
                self._send(reports)
            except BaseException:
                with self._changed:
                    self._reports[:0] = reports
                    if self._first_at is None:
                        self._first_at = time.monotonic()
                raise

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flusher thread (waiting at most ``timeout`` for a send in progress)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and self._first_at is None:
                    self._changed.wait()
                if self._closed:
                    return
                assert self._first_at is not None
                delay = self._first_at + self._max_wait - time.monotonic()
                if delay > 0:
                    self._changed.wait(delay)
                    continue
            try:
                self.flush()
            except Exception as exc:  # the reports are kept: the worker's next flush decides
                logger.warning("sending step reports failed; the worker sends them after its step: %s", exc)
                return
