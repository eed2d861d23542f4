"""``ProcessEngine``: the worker loop (claim, run, report) with heartbeats."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from ..broker.base import StepAssignment, StepReport
from ..clients import BrokerClient
from ..errors import BrokerError, DatabaseUnavailable, LeaseLost
from ..workflow.workflow import Workflow
from .assignment import run_assignment
from .reportbuffer import ReportBuffer

logger = logging.getLogger("fuseline.worker")
T = TypeVar("T")

#: Heartbeat period when the broker's lease length is unknown.
DEFAULT_HEARTBEAT_SECONDS = 5.0
#: Longest single wait while idle, so a stop request is noticed quickly.
IDLE_SLICE_SECONDS = 0.25
#: Longest wait of a finished step's report when prefetching (reports are sent in batches).
REPORT_FLUSH_SECONDS = 0.05
#: Waits between attempts while the database is unreachable: doubling up to the last.
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ProcessEngine:
    """Runs the steps a broker hands out for the given workflows.

    Registration happens here, so the worker id exists from construction on.
    ``work()`` drains: it returns when no step is ready. ``work(block=True)``
    keeps polling until :meth:`stop` is called (from a signal handler or
    another thread); the step in hand is always finished first.

    A background thread sends heartbeats (``keep_alive``) every third of the
    lease, so a long step keeps its lease. If a heartbeat shows the lease of
    the step in hand was lost (expired and handed to another worker), the
    result is dropped instead of reported: the broker would refuse it anyway.

    ``prefetch=N`` claims up to N steps at a time and reports finished ones
    in batches (see :meth:`_work_prefetching`): fewer round trips and durable
    commits per step for short steps, at the price of holding steps other
    workers could have started, and of re-running the finished steps whose
    reports were still waiting if this worker is killed.
    """

    def __init__(
        self,
        client: BrokerClient,
        workflows: Iterable[Workflow],
        *,
        heartbeat_interval: float | None = None,
        prefetch: int = 1,
    ) -> None:
        self.client = client
        self.workflows = {(wf.workflow_id, wf.version): wf for wf in workflows}
        if heartbeat_interval is None:
            lease = getattr(client, "lease_seconds", None)
            heartbeat_interval = lease / 3 if lease else DEFAULT_HEARTBEAT_SECONDS
        self.heartbeat_interval = heartbeat_interval
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.prefetch = prefetch
        self.worker_id = client.register_worker([wf.to_schema() for wf in self.workflows.values()])
        self.steps_run = 0
        self._stopping = threading.Event()
        self._current: StepAssignment | None = None
        self._lost: StepAssignment | None = None
        self._closed = False

    # -- the loop ------------------------------------------------------------------------
    def work(
        self,
        block: bool = False,
        poll_interval: float = 0.5,
        max_steps: int | None = None,
        until: Callable[[], bool] | None = None,
    ) -> int:
        """Claim, run and report steps; returns how many ran.

        ``block=False`` returns as soon as nothing is ready; ``block=True``
        waits ``poll_interval`` seconds between empty polls until ``stop()``,
        or until ``until()`` returns true after an empty poll (a burst worker
        passes "no instance is running any more"). ``max_steps`` stops after
        that many steps.
        """
        self._stopping.clear()
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(beat_stop,), name="fuseline-heartbeat", daemon=True
        )
        beat.start()
        ran = 0
        held: StepAssignment | None = None  # claimed together with the last report
        try:
            if self.prefetch > 1:
                return self._work_prefetching(block, poll_interval, max_steps, until)
            while held is not None or not self._stopping.is_set():
                assignment, held = held, None
                if assignment is None:
                    assignment = self._retrying(
                        "claim a step", lambda: self.client.get_step(self.worker_id), stoppable=True
                    )
                if assignment is None:
                    if not block or (until is not None and until()):
                        break
                    self._idle(poll_interval)
                    continue
                last = max_steps is not None and ran + 1 >= max_steps
                counted, held = self._run(assignment, claim_next=not last)
                if counted:
                    ran += 1
                if last:
                    break
        finally:
            beat_stop.set()
            beat.join()
        return ran

    def _idle(self, poll_interval: float) -> None:
        """Wait for a work notification, or poll_interval, in slices so stop() is prompt."""
        deadline = time.monotonic() + poll_interval
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if self.client.wait_for_work(min(remaining, IDLE_SLICE_SECONDS)):
                    return
            except DatabaseUnavailable as exc:
                logger.warning("waiting for work failed: %s", exc)
                self._stopping.wait(min(remaining, IDLE_SLICE_SECONDS))

    def stop(self) -> None:
        """Ask ``work`` to return after the step in hand (safe from signal handlers)."""
        self._stopping.set()

    def close(self) -> None:
        """Run ``after_all`` hooks and deregister, so held steps are queued again at once."""
        if self._closed:
            return
        self._closed = True
        for workflow in self.workflows.values():
            workflow.close()
        try:
            self.client.deregister_worker(self.worker_id)
        except BrokerError as exc:
            logger.warning("could not deregister worker %s: %s", self.worker_id, exc)

    def _run(self, assignment: StepAssignment, *, claim_next: bool) -> tuple[bool, StepAssignment | None]:
        """Run one step and report it; returns (whether it ran, the next step if one was claimed).

        The report and the next claim travel together when the broker can
        do both at once; a stop request in the meantime only prevents the
        claim, never the report.
        """
        ran, report = self._execute(assignment)
        if report is None:
            return ran, None
        # A report is idempotent (an exact replay is accepted), so it is safe
        # to send again when the connection dropped mid-commit.
        try:
            if claim_next and not self._stopping.is_set():
                held = self._retrying(
                    "report",
                    lambda: self.client.report_and_claim(self.worker_id, report),
                    stoppable=False,
                )
                return True, held
            self._retrying("report", lambda: self.client.report_step(self.worker_id, report), stoppable=False)
        except LeaseLost as exc:
            logger.warning("%s", exc)
        return True, None

    def _execute(self, assignment: StepAssignment) -> tuple[bool, StepReport | None]:
        """Run one step; returns (whether it ran, its report, or None when there is none to send)."""
        workflow = self.workflows.get((assignment.workflow_id, assignment.version))
        if workflow is None or assignment.step_name not in workflow.steps_by_name:
            logger.warning(
                "ignoring step %r of workflow %s@%s: this worker does not know it",
                assignment.step_name,
                assignment.workflow_id,
                assignment.version,
            )
            return False, None
        self._current = assignment
        try:
            execution = run_assignment(workflow, assignment)
        finally:
            self._current = None
        report = execution.report
        logger.info(
            "instance=%s step=%s attempt=%d state=%s duration=%.3fs",
            assignment.instance_id,
            assignment.step_name,
            assignment.attempt,
            report.state,
            execution.seconds,
        )
        if self._lost is assignment:
            logger.warning(
                "dropping the result of step %s of instance %s: its lease was lost",
                assignment.step_name,
                assignment.instance_id,
            )
            return True, None
        self.steps_run += 1
        return True, report

    # -- prefetching ---------------------------------------------------------------------
    def _work_prefetching(
        self,
        block: bool,
        poll_interval: float,
        max_steps: int | None,
        until: Callable[[], bool] | None,
    ) -> int:
        """The loop of :meth:`work` when ``prefetch > 1``: claim a batch, run it, report in batches.

        Finished steps' reports wait in a :class:`.reportbuffer.ReportBuffer`
        (at most ``REPORT_FLUSH_SECONDS`` after the first, or until the batch
        is done) and are sent together, so the broker commits them at once; a
        worker killed meanwhile loses only those results, and their steps run
        again when their leases expire.
        On a stop request the step in hand is finished, the reports are sent
        and the steps not started are given back at once.
        """
        ran = 0
        queue: deque[StepAssignment] = deque()
        reports = ReportBuffer(self._send_reports, REPORT_FLUSH_SECONDS)
        try:
            while True:
                if not queue:
                    reports.flush()
                    if self._stopping.is_set():
                        break
                    wanted = self.prefetch if max_steps is None else min(self.prefetch, max_steps - ran)
                    batch = self._retrying(
                        "claim steps",
                        lambda wanted=wanted: self.client.get_steps(self.worker_id, wanted),
                        stoppable=True,
                    )
                    if not batch:
                        if not block or self._stopping.is_set() or (until is not None and until()):
                            break
                        self._idle(poll_interval)
                        continue
                    queue.extend(batch)
                if self._stopping.is_set():
                    break
                counted, report = self._execute(queue.popleft())
                if counted:
                    ran += 1
                if report is not None:
                    reports.add(report)
                if max_steps is not None and ran >= max_steps:
                    break
            reports.flush()
        finally:
            reports.close()
            if queue:
                self._give_back(list(queue))
        return ran

    def _send_reports(self, reports: list[StepReport]) -> None:
        """Report finished steps together; waits out outages, never gives up on them."""
        outcomes = self._retrying(
            "report", lambda: self.client.report_steps(self.worker_id, reports), stoppable=False
        )
        for outcome in outcomes or []:
            if outcome is not None:
                logger.warning("%s", outcome)

    def _give_back(self, assignments: list[StepAssignment]) -> None:
        """Release prefetched steps that will not run here; if that fails, their leases expire."""
        try:
            self.client.release_steps(self.worker_id, assignments)
        except BrokerError as exc:
            logger.warning("could not give back %d prefetched steps: %s", len(assignments), exc)

    def _retrying(self, what: str, call: Callable[[], T], *, stoppable: bool) -> T | None:
        """Call ``call``, waiting out database outages with growing pauses.

        Only :class:`~fuseline.errors.DatabaseUnavailable` (connection lost,
        server restarting, deadlock victim) is retried; anything else, a
        read-only database included, is a real answer and stops the worker. A
        ``stoppable`` call gives up (returns None) when ``stop()`` is asked
        during the outage; a report never gives up, since a result is not
        to be lost while the worker can still deliver it.
        """
        failures = 0
        while True:
            try:
                result = call()
            except DatabaseUnavailable as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                logger.warning("database unavailable (%s failed: %s); retrying in %.1fs", what, exc, delay)
                if self._stopping.wait(delay) and stoppable:
                    return None
                continue
            if failures:
                logger.info("database reachable again after %d failed attempts", failures)
            return result

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            held = self._current
            try:
                leases = self.client.keep_alive(self.worker_id)
            except Exception as exc:  # an outage must not kill the worker; the next beat retries
                logger.warning("heartbeat failed: %s", exc)
                continue
            if held is not None and held is self._current:
                still_held = any(
                    lease.instance_id == held.instance_id
                    and lease.step_name == held.step_name
                    and lease.attempt == held.attempt
                    for lease in leases
                )
                if not still_held:
                    self._lost = held
