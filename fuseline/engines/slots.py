"""The worker loop with slots: one process running up to N steps at once (``--slots N``).

Most real steps wait on an API or a database; one step at a time leaves a
worker process idle through those waits. With slots the worker keeps N
steps running: ``AsyncStep``s as coroutines on one event loop, plain steps
each on a thread (:class:`.slotpool.SlotPool`). The single-slot loop in
:mod:`.worker` stays as it is (its hot path is one step in hand, no
threads); :class:`~.worker.Worker` hands ``work()`` to :class:`SlotLoop`
when it has more than one slot.

What each step keeps, exactly as with one slot:

- its own lease: the worker's heartbeat renews every lease the worker holds
  in one ``keep_alive``, and checks each running step's lease after every
  beat (:class:`.slotleases.SlotLeases`); a step whose lease was lost while
  it ran has its result dropped, not reported (the broker would refuse it
  anyway: reports are fenced by worker and attempt);
- its own report, and the broker's retry when it failed.

What the slots share: one worker id, one heartbeat, the process's broker
connections (slots add no connection: only this loop, the heartbeat and
the report thread talk to the broker), and the batching of broker calls.
A claim asks for as many steps as there are free slots, in one call, and
every claimed step starts at once, so the worker never holds a step it has
not started. Reports go out in batches from a thread of their own
(:class:`.slotreports.SlotReporter`) while the loop claims: with a hundred
slots, sending a batch of reports costs several times what claiming does,
and freed slots should not wait for it. Once a batch is delivered the loop
claims again if the queue looked empty, since those reports may have
queued successors. ``prefetch`` (steps held ahead of a single slot) has no
meaning here, and the worker refuses it beside ``slots``.

While some slots are busy and the last claim found nothing, the worker
claims again when a slot frees or every ``poll_interval``; with every slot
free it waits for a work notification like the single-slot worker.

A graceful stop (``stop()``, SIGTERM) claims nothing more, lets every
running step finish, and sends every report; steps a claim brought back
after the stop was asked are given back unstarted. A ``BaseException``
(a second signal's ``KeyboardInterrupt``) stops at once: running steps are
abandoned and come back through their leases (or at once, when the worker
deregisters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..broker.base import StepReport
from .retry import GaveUp
from .slotleases import SlotLeases
from .slotpool import Slot, SlotPool
from .slotreports import SlotReporter

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("fuseline.worker")

#: Longest single wait for a slot to free, so a stop request or a lost registration is noticed.
WAIT_SLICE_SECONDS = 0.25
#: How long a worker stopping at once waits for a batch of reports being sent.
ABANDON_SECONDS = 5.0


class SlotLoop:
    """The claim-run-report loop of ``worker`` over ``slots`` slots (see the module docstring).

    It talks to the broker through the worker's own claim, report, give-back
    and register-again paths, so outages, refusals and a worker listed dead
    are handled as the single-slot loop handles them.
    """

    def __init__(self, worker: Worker, slots: int) -> None:
        self.worker = worker
        self.slots = slots

    def work(
        self,
        block: bool,
        poll_interval: float,
        max_steps: int | None,
        until: Callable[[], bool] | None,
    ) -> int:
        """``Worker.work`` with slots: returns how many steps were started."""
        worker = self.worker
        worker._stopping.clear()
        pool = SlotPool(self.slots, worker._lifecycle)
        leases = SlotLeases()
        reporter = SlotReporter(worker._send_reports, pool.wake)
        worker._beat.slots = leases
        worker._beat.start()
        try:
            try:
                started = self._loop(pool, leases, reporter, block, poll_interval, max_steps, until)
            except BaseException:
                pool.abandon()
                reporter.close(ABANDON_SECONDS)  # stopping at once: reports not sent are dropped
                raise
            pool.close()
            worker._send_last(reporter.close())
        finally:
            worker._beat.stop()
            worker._beat.slots = None
        if worker._beat.failure is not None:
            raise worker._beat.failure
        return started

    def _loop(
        self,
        pool: SlotPool,
        leases: SlotLeases,
        reporter: SlotReporter,
        block: bool,
        poll_interval: float,
        max_steps: int | None,
        until: Callable[[], bool] | None,
    ) -> int:
        """Claim into free slots until drained, stopped or ``max_steps``; returns when every slot
        is free again (their reports handed to ``reporter``)."""
        worker = self.worker
        started = 0
        given_back: set[tuple[str, str]] = set()
        claiming = True
        drained = False  # the last claim brought fewer steps than it asked for
        next_poll = 0.0  # when a drained queue is asked again, though nothing changed
        freed = False  # a slot freed, or reports were delivered, since the last claim
        delivered = 0  # report batches delivered, as last seen
        while True:
            freed = self._collect(pool, leases, reporter, 0) or freed
            idle, sent = reporter.progress()
            if sent != delivered:  # the reports may have queued successors: worth a claim
                freed, delivered = True, sent
            if reporter.failure is not None:  # a second failure is raised: the worker stops
                worker._send_reports(reporter.recover())
            if claiming and (worker._stopping.is_set() or worker._beat.failure is not None):
                claiming = False
            if claiming and max_steps is not None and started >= max_steps:
                claiming = False
            if claiming and worker._beat.expired():
                claiming = self._register_again(leases, reporter)
            free = self.slots - pool.running
            if claiming and free > 0 and (freed or not drained or time.monotonic() >= next_poll):
                freed = False
                wanted = free if max_steps is None else min(free, max_steps - started)
                try:
                    count, drained = self._claim_into(pool, leases, wanted, given_back)
                except GaveUp:  # asked to stop while the database was unavailable
                    claiming = False
                    continue
                started += count
                if drained:
                    next_poll = time.monotonic() + poll_interval
                continue
            if pool.running == 0 and idle:
                if not claiming or not block or self._done(until):
                    return started
                worker._idle(max(0.0, next_poll - time.monotonic()))
                drained = False
                continue
            wait = WAIT_SLICE_SECONDS
            if claiming and drained and free > 0:
                wait = min(wait, max(0.0, next_poll - time.monotonic()))
            freed = self._collect(pool, leases, reporter, wait) or freed

    def _done(self, until: Callable[[], bool] | None) -> bool:
        try:
            return self.worker._done(until)
        except GaveUp:
            return True

    def _claim_into(
        self, pool: SlotPool, leases: SlotLeases, wanted: int, given_back: set[tuple[str, str]]
    ) -> tuple[int, bool]:
        """Claim up to ``wanted`` steps in one call and start them.

        Returns how many started, and whether the queue looked drained (fewer
        steps than asked, none of them a step of an unknown workflow met for
        the first time, which is worth claiming again at once).
        """
        worker = self.worker
        claimed, fresh = worker._keep_known(worker._claim(wanted, []), given_back)
        if worker._stopping.is_set():  # asked to stop during the claim: start nothing more
            if claimed:
                worker._give_back(claimed)
            return 0, True
        for assignment in claimed:
            workflow = worker.workflows[(assignment.workflow_id, assignment.version)]
            slot = Slot(assignment, workflow)
            worker._observer.started(assignment)
            leases.add(slot.key)
            pool.start(slot)
        return len(claimed), len(claimed) < wanted and not fresh

    def _collect(self, pool: SlotPool, leases: SlotLeases, reporter: SlotReporter, wait: float) -> bool:
        """Take the slots that ended (waiting up to ``wait`` for one) and hand on their reports.

        Returns whether any ended. A step that raised a ``BaseException`` is
        raised here, after the others' reports are handed on: the worker stops.
        """
        ended = pool.finished(wait)
        error: BaseException | None = None
        reports: list[StepReport] = []
        for slot in ended:
            lost = leases.finish(slot.key)
            if slot.error is not None:
                error = error or slot.error
                continue
            report = self._finished(slot, lost)
            if report is not None:
                reports.append(report)
        if reports:
            reporter.add(reports)
        if error is not None:
            raise error
        return bool(ended)

    def _finished(self, slot: Slot, lost: bool) -> StepReport | None:
        """The report of a slot's step, or None when its lease was lost while it ran."""
        assert slot.execution is not None
        return self.worker._ended(slot.assignment, slot.execution, lost=lost)

    def _register_again(self, leases: SlotLeases, reporter: SlotReporter) -> bool:
        """Go on under a new worker id after the broker listed this one dead; False if that was
        given up (the worker was closed, or asked to stop during an outage).

        The steps still running were claimed under the old id: the broker
        handed their leases on, so their results are dropped when they end.
        """
        leases.lose_all()
        reports = reporter.take()
        try:
            self.worker._register_again(self.worker._beat.expiry, reports, [])
        except GaveUp:
            return False
        return True
