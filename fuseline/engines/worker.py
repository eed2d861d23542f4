"""``Worker``: the worker loop (claim, run, report) with heartbeats.

There is one loop for every prefetch: a worker claims a batch (of one by
default), runs it step by step, and claims the next batch when the last one
is done. The reports of steps finished while more of the batch remains wait
in a :class:`.reportbuffer.ReportBuffer` (at most ``REPORT_FLUSH_SECONDS``);
the rest go out together with the next claim. For one report and a batch of
one that is ``report_and_claim``: on PostgreSQL the report and the next
claim share one round trip, the hot path of a worker without prefetch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from ..broker.base import StepAssignment, StepReport
from ..clients import BrokerClient
from ..errors import (
    BrokerError,
    DatabaseUnavailable,
    FuselineError,
    LeaseLost,
    ReportConflict,
    UnknownInstance,
    WorkerExpired,
)
from ..workflow.lifecycle import StepLifecycle
from ..workflow.workflow import Workflow
from .assignment import Execution, run_assignment
from .heartbeat import Heartbeat
from .observer import NO_OBSERVER, WorkerObserver
from .reportbuffer import ReportBuffer
from .retry import GaveUp, call_retrying

logger = logging.getLogger("fuseline.worker")
T = TypeVar("T")

#: Heartbeat period when the broker's lease length is unknown.
DEFAULT_HEARTBEAT_SECONDS = 5.0
#: Longest single wait while idle, so a stop request is noticed quickly.
IDLE_SLICE_SECONDS = 0.25
#: Longest wait of a finished step's report while more steps of its batch remain.
REPORT_FLUSH_SECONDS = 0.05

#: What identifies a step handed out: (instance id, step name).
StepKey = tuple[str, str]
#: Reports refused for good, nothing changed: lease lost, another outcome accepted, or the instance
#: gone (deleted, or lost in a failover before it was replicated). Dropped with a warning.
UNDELIVERABLE = (LeaseLost, ReportConflict, UnknownInstance)


def check_slots(slots: int, prefetch: int) -> None:
    """Refuse a slot count below 1, and ``prefetch`` beside slots (one claim fills the free slots)."""
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be an integer of at least 1, not {slots!r}")
    if slots > 1 and prefetch > 1:
        raise ValueError(
            f"prefetch={prefetch} cannot be combined with slots={slots}: with slots, each claim "
            "takes as many steps as there are free slots"
        )


class Worker:
    """Runs the steps a broker hands out for the given workflows (also known as ``ProcessEngine``).

    It starts no process: it is the loop a worker process runs. Registration
    happens here, so the worker id exists from construction on. ``work()``
    drains: it returns when no step is ready. ``work(block=True)`` keeps
    polling until :meth:`stop` is called (from a signal handler or another
    thread); the step in hand is always finished first.

    A background :class:`.heartbeat.Heartbeat` renews the leases every third
    of the lease, so a long step keeps its lease. If a heartbeat shows the
    lease of the step in hand was lost (expired and handed to another
    worker), the result is dropped instead of reported: the broker would
    refuse it anyway. A heartbeat refused for good (an unknown worker, a
    missing privilege) or failing with a bug stops the worker after the step
    in hand: ``work()`` raises that error. A broker that lists the worker dead
    (:class:`~fuseline.errors.WorkerExpired`, after a long partition or a
    stopped process) refuses its claims and heartbeats; the worker then
    registers again under a new id and goes on.

    ``prefetch=N`` claims up to N steps at a time and reports finished ones
    in batches: fewer round trips and durable commits per step for short
    steps, at the price of holding steps other workers could have started,
    and of re-running the finished steps whose reports were still waiting if
    this worker is killed. A graceful stop finishes the step in hand, sends
    every report and gives the steps not started back at once.

    ``slots=N`` runs up to N steps at once in this process (``AsyncStep``s on
    one event loop, plain steps on threads), each with its own lease; see
    :mod:`.slots`. A claim then asks for as many steps as there are free
    slots, so ``prefetch`` (steps held ahead of the one slot) cannot be
    combined with it. ``slots=1`` is the loop below, unchanged.

    ``queues`` limits the worker to the steps waiting in those queues
    (``Step(queue="gpu")``); None serves every queue of its workflows. Steps
    run without their ``RetryPolicy``: a failure is reported at once and the
    broker schedules the retry, so a retry survives this worker and may run
    on another one.

    ``observer`` hears what the worker does (:class:`fuseline.metrics.WorkerMetrics`
    counts it for Prometheus); without one nothing is counted.
    """

    def __init__(
        self,
        client: BrokerClient,
        workflows: Iterable[Workflow],
        *,
        heartbeat_interval: float | None = None,
        prefetch: int = 1,
        queues: Sequence[str] | None = None,
        observer: WorkerObserver | None = None,
        slots: int = 1,
    ) -> None:
        self._observer = observer or NO_OBSERVER
        self.client = self._observer.client(client)
        self.queues = list(queues) if queues is not None else None
        # A workflow's SubWorkflow children are served too: their steps need a worker.
        self.workflows = {wf.key: wf for parent in workflows for wf in (parent, *parent.children)}
        if heartbeat_interval is None:
            lease = getattr(client, "lease_seconds", None)
            heartbeat_interval = lease / 3 if lease else DEFAULT_HEARTBEAT_SECONDS
        self.heartbeat_interval = heartbeat_interval
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        self.prefetch = prefetch
        check_slots(slots, prefetch)
        self.slots = slots
        self._schemas = [wf.to_schema() for wf in self.workflows.values()]
        self._observer.serving(self._schemas)
        self.worker_id = self._register()
        self.steps_run = 0
        self._stopping = threading.Event()
        self._beat = Heartbeat(client, lambda: self.worker_id, heartbeat_interval)
        self._warned_unknown: set[tuple[str, str, str]] = set()
        #: This worker's ``before_all``/``after_all`` scope: each step prepared once, closed by close().
        self._lifecycle = StepLifecycle()
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
        passes "no instance is running any more"; like a claim, it is retried
        while the database is unavailable). ``max_steps`` stops after that
        many steps. A permanent heartbeat failure is raised after the step in
        hand, once its report is sent. With slots, "the step in hand" is
        every running slot's step.
        """
        if self.slots > 1:
            from .slots import SlotLoop

            return SlotLoop(self, self.slots).work(block, poll_interval, max_steps, until)
        self._stopping.clear()
        queue: deque[StepAssignment] = deque()  # claimed, not started
        pending: list[StepReport] = []  # finished when the queue was empty: sent with the next claim
        reports = ReportBuffer(self._send_reports, REPORT_FLUSH_SECONDS)
        self._beat.start()
        try:
            ran = self._loop(queue, pending, reports, block, poll_interval, max_steps, until)
            self._send_last(reports.take() + pending)
        finally:
            reports.close()
            if queue:
                self._give_back(list(queue))
            self._beat.stop()
        if self._beat.failure is not None:
            raise self._beat.failure
        return ran

    def _loop(
        self,
        queue: deque[StepAssignment],
        pending: list[StepReport],
        reports: ReportBuffer,
        block: bool,
        poll_interval: float,
        max_steps: int | None,
        until: Callable[[], bool] | None,
    ) -> int:
        """Run batches until drained, stopped, ``max_steps``, or a heartbeat failure; returns the count.

        Leaves in ``queue`` the steps not started and in ``pending`` the
        reports not sent, for :meth:`work` to deal with.
        """
        ran = 0
        given_back: set[StepKey] = set()  # steps of unknown workflows released during this call
        try:
            while self._beat.failure is None and not self._stopping.is_set():
                if self._beat.expired():
                    outgoing, unstarted = reports.take() + pending, list(queue)
                    pending.clear()
                    queue.clear()
                    self._register_again(self._beat.expiry, outgoing, unstarted)
                if max_steps is not None and ran >= max_steps:
                    break
                if queue:
                    report = self._execute(queue.popleft())
                    ran += 1
                    if report is not None and queue:  # waits at most REPORT_FLUSH_SECONDS
                        reports.add(report)
                    elif report is not None:  # the batch is done: it goes with the next claim
                        pending.append(report)
                    continue
                wanted = self.prefetch if max_steps is None else min(self.prefetch, max_steps - ran)
                outgoing = reports.take() + pending
                pending.clear()
                claimed, fresh = self._keep_known(self._claim(wanted, outgoing), given_back)
                if claimed:
                    queue.extend(claimed)
                elif not fresh:
                    if not block or self._stopping.is_set() or self._done(until):
                        break
                    self._idle(poll_interval)
        except GaveUp:  # asked to stop while the database was unavailable
            pass
        return ran

    def _done(self, until: Callable[[], bool] | None) -> bool:
        """Whether ``until()`` says to stop; it is a database call too, so outages are waited out."""
        if until is None:
            return False
        return bool(self._retrying("check whether work remains", until, stoppable=True))

    def _idle(self, poll_interval: float) -> None:
        """Wait for a work notification, or poll_interval, in slices so stop() is prompt."""
        deadline = time.monotonic() + poll_interval
        while not self._stopping.is_set() and self._beat.failure is None and not self._beat.expired():
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
        """Ask ``work`` to return after the step in hand, or every slot's (safe from signal handlers)."""
        self._stopping.set()

    def close(self) -> None:
        """Run the ``after_all`` hooks of the steps this worker ran, and deregister, so held steps
        are queued again at once.

        A ``work()`` still running elsewhere stops after its step in hand, and
        does not register again when the broker then refuses it as stopped.
        """
        if self._closed:
            return
        self._closed = True
        self.stop()
        try:
            self._lifecycle.close()
        finally:  # an after_all that raises must not keep the held steps from going back
            try:
                self.client.deregister_worker(self.worker_id)
            except BrokerError as exc:
                logger.warning("could not deregister worker %s: %s", self.worker_id, exc)

    # -- running -------------------------------------------------------------------------
    def _execute(self, assignment: StepAssignment) -> StepReport | None:
        """Run one step; returns its report, or None when its lease was lost meanwhile."""
        workflow = self.workflows[(assignment.workflow_id, assignment.version)]
        self._observer.started(assignment)
        self._beat.current = assignment
        try:
            execution = run_assignment(workflow, assignment, self._lifecycle, policy_retries=False)
        finally:
            self._beat.current = None
        return self._ended(assignment, execution, lost=self._beat.lost is assignment)

    def _ended(self, assignment: StepAssignment, execution: Execution, *, lost: bool) -> StepReport | None:
        """A step ended (in the loop or in a slot): count and log it; its report, or None when its
        lease was lost while it ran (the broker would refuse the report anyway)."""
        self._observer.finished(assignment, execution)
        report = execution.report
        logger.info(
            "instance=%s step=%s attempt=%d state=%s duration=%.3fs",
            assignment.instance_id,
            assignment.step_name,
            assignment.attempt,
            report.state,
            execution.seconds,
        )
        if lost:
            logger.warning(
                "dropping the result of step %s of instance %s: its lease was lost",
                assignment.step_name,
                assignment.instance_id,
            )
            self._observer.dropped(assignment)
            return None
        self.steps_run += 1
        return report

    def _keep_known(
        self, claimed: list[StepAssignment], given_back: set[StepKey]
    ) -> tuple[list[StepAssignment], bool]:
        """Give back at once the claimed steps this worker cannot run; returns the others.

        Left held, such a step would be renewed by every heartbeat and never
        run. Also returns whether one of those given back is new in this
        ``work()`` call: released steps go to the end of the queue, so meeting
        one again means nothing else is queued for this worker right now.
        """
        known: list[StepAssignment] = []
        unknown: list[StepAssignment] = []
        for assignment in claimed:
            (known if self._knows(assignment) else unknown).append(assignment)
        if not unknown:
            return known, False
        for a in unknown:
            key = (a.workflow_id, a.version, a.step_name)
            level = logging.DEBUG if key in self._warned_unknown else logging.WARNING
            self._warned_unknown.add(key)
            logger.log(
                level,
                "giving back step %r of workflow %s@%s (instance %s): this worker does not know it",
                a.step_name,
                a.workflow_id,
                a.version,
                a.instance_id,
            )
        self._give_back(unknown, patient=True)
        keys = {(str(a.instance_id), a.step_name) for a in unknown}
        fresh = not keys <= given_back
        given_back |= keys
        return known, fresh

    def _knows(self, assignment: StepAssignment) -> bool:
        workflow = self.workflows.get((assignment.workflow_id, assignment.version))
        return workflow is not None and workflow.knows(assignment.step_name)

    # -- talking to the broker -----------------------------------------------------------
    def _claim(self, wanted: int, outgoing: list[StepReport]) -> list[StepAssignment]:
        """Claim up to ``wanted`` steps, sending the ``outgoing`` reports first or with the claim.

        Raises GaveUp when stop() is asked during an outage (after the reports
        are delivered). A claim refused because the broker listed this worker
        dead registers it again and claims once more under the new id.
        """
        try:
            return self._claim_once(wanted, outgoing)
        except WorkerExpired as exc:
            # Reports not known to be delivered are sent again under the old id: an exact
            # replay of a report accepted meanwhile is a no-op.
            self._register_again(exc, outgoing, [])
        return self._claim_once(wanted, [])  # refused again: a broker problem, raised

    def _claim_once(self, wanted: int, outgoing: list[StepReport]) -> list[StepAssignment]:
        """One claim (see :meth:`_claim`); empties ``outgoing`` once those reports are delivered."""
        if len(outgoing) == 1 and wanted == 1:
            report = outgoing[0]
            try:
                held = self._retrying(
                    "report", lambda: self.client.report_and_claim(self.worker_id, report), stoppable=True
                )
            except GaveUp:
                self._send_reports(outgoing)  # a report never gives up; only the claim does
                outgoing.clear()
                raise
            except UNDELIVERABLE as exc:  # the report was refused, nothing claimed
                logger.warning("%s", exc)
                outgoing.clear()
            else:
                outgoing.clear()
                return [held] if held is not None else []
        elif outgoing:
            self._send_reports(outgoing)
            outgoing.clear()
        if wanted == 1:
            one = self._retrying("claim a step", lambda: self.client.get_step(self.worker_id), stoppable=True)
            return [one] if one is not None else []
        return self._retrying(
            "claim steps", lambda: self.client.get_steps(self.worker_id, wanted), stoppable=True
        )

    def _send_reports(self, reports: list[StepReport]) -> None:
        """Report finished steps; waits out outages and never gives up on them while the worker lives.

        Called by the loop and by the report buffer's flusher thread.
        Refused reports (:data:`UNDELIVERABLE`) changed nothing and are
        logged. If the broker refuses them because it listed this worker
        dead, their steps are another worker's to run now: they are dropped,
        and the loop registers again.
        """
        worker_id = self.worker_id
        try:
            if len(reports) == 1:
                outcomes = [self._report_alone(worker_id, reports[0])]
            else:
                try:
                    outcomes = self._retrying(
                        "report", lambda: self.client.report_steps(worker_id, reports), stoppable=False
                    )
                except UnknownInstance:  # one instance is gone: the others go one at a time
                    outcomes = [self._report_alone(worker_id, report) for report in reports]
        except WorkerExpired as exc:
            logger.warning("dropping the results of %d steps: %s", len(reports), exc)
            self._beat.note_expired(worker_id, exc)
            return
        for outcome in outcomes:
            if outcome is not None:
                logger.warning("%s", outcome)

    def _report_alone(self, worker_id: str, report: StepReport) -> BrokerError | None:
        """Report one step, waiting out outages; the refusal if it is undeliverable, else None."""
        try:
            self._retrying("report", lambda: self.client.report_step(worker_id, report), stoppable=False)
        except UNDELIVERABLE as exc:
            return exc
        return None

    def _send_last(self, reports: list[StepReport]) -> None:
        """Send the reports left when the loop ends; after a heartbeat failure, as far as possible."""
        if not reports:
            return
        if self._beat.failure is None:
            self._send_reports(reports)
            return
        try:
            self._send_reports(reports)
        except FuselineError as exc:  # the heartbeat's error is the one work() raises
            logger.warning("could not send the reports of %d steps: %s", len(reports), exc)

    def _give_back(self, assignments: list[StepAssignment], *, patient: bool = False) -> None:
        """Release claimed steps that will not run here; if that fails, their leases expire.

        ``patient`` waits out an outage (until stop() is asked): a step of an
        unknown workflow left held would be renewed by every heartbeat.
        """
        try:
            if patient:
                self._retrying(
                    "give back steps",
                    lambda: self.client.release_steps(self.worker_id, assignments),
                    stoppable=True,
                )
            else:
                self.client.release_steps(self.worker_id, assignments)
        except (GaveUp, FuselineError) as exc:
            count = len(assignments)
            logger.warning("could not give back %d steps (their leases will expire): %s", count, exc)

    def _register_again(
        self,
        refusal: WorkerExpired | None,
        outgoing: list[StepReport],
        unstarted: list[StepAssignment],
    ) -> None:
        """Go on under a new worker id after the broker listed this one dead.

        First, under the old id: the reports of finished steps are sent (the
        broker accepts those whose lease still held) and the steps not
        started are given back. The step in hand when a heartbeat was refused
        was marked lost, so its result is not reported.
        """
        old = self.worker_id
        if outgoing:
            self._send_reports(outgoing)
        if unstarted:
            self._give_back(unstarted)
        if self._closed:
            raise GaveUp("register again")  # close() deregistered it: the broker was right
        self.worker_id = self._retrying("register again", self._register, stoppable=True)
        logger.warning(
            "registered again as worker %s: the broker refused worker %s as dead (%s)",
            self.worker_id,
            old,
            refusal,
        )

    def _register(self) -> str:
        """A new worker id for its workflows (and queues: clients that predate queues are asked
        without them when the worker serves every queue)."""
        if self.queues is None:
            return self.client.register_worker(self._schemas)
        return self.client.register_worker(self._schemas, queues=self.queues)

    def _retrying(self, what: str, call: Callable[[], T], *, stoppable: bool) -> T:
        return call_retrying(what, call, stopping=self._stopping, stoppable=stoppable)
