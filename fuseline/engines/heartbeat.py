"""The worker's heartbeat: a background thread that renews its leases while steps run.

The thread only observes; the worker loop acts on what it saw, between
steps (a running step cannot be interrupted):

- ``lost``: the step in hand is no longer among the worker's leases (it
  expired and went to another worker), so its result is not to be reported;
- ``expired_id``: the broker listed the worker dead (:class:`WorkerExpired`),
  so the loop registers again under a new id;
- ``failure``: a permanent error (an unknown worker, a missing privilege) or
  a bug. Beating on would keep the worker claiming work it cannot hold, so
  the thread stops and the loop raises the error after the step in hand.

A database outage (:class:`DatabaseUnavailable`) is logged and retried at the
next beat: the leases last three beats, so one missed beat loses nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..broker.base import Lease, StepAssignment
from ..clients import BrokerClient
from ..errors import DatabaseUnavailable, WorkerExpired

if TYPE_CHECKING:
    from .slotleases import SlotLeases

logger = logging.getLogger("fuseline.worker")


class Heartbeat:
    """Calls ``keep_alive`` every ``interval`` seconds from a thread, between :meth:`start` and :meth:`stop`.

    ``worker_id`` is read at every beat, since a worker that was listed dead
    registers again under a new id. The worker loop sets ``current`` to the
    step it is running; a worker with several slots sets ``slots`` instead,
    and every beat checks each of their leases.
    """

    def __init__(self, client: BrokerClient, worker_id: Callable[[], str], interval: float) -> None:
        self.client = client
        self.worker_id = worker_id
        self.interval = interval
        #: The step the worker is running now (set by the worker loop).
        self.current: StepAssignment | None = None
        #: A step whose lease a beat found lost while it ran.
        self.lost: StepAssignment | None = None
        #: The steps running in a multi-slot worker's slots (None with one slot).
        self.slots: SlotLeases | None = None
        #: The worker id a broker refused as dead, until the worker registers again, and why.
        self.expired_id: str | None = None
        self.expiry: WorkerExpired | None = None
        #: The permanent error (or bug) that stopped the heartbeat.
        self.failure: Exception | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating (a failure of an earlier run is forgotten: the loop raised it)."""
        self.failure = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="fuseline-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for a beat in progress to end."""
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._stop = self._thread = None

    def expired(self) -> bool:
        """Whether the broker listed the current worker id dead."""
        return self.expired_id is not None and self.expired_id == self.worker_id()

    def note_expired(self, worker_id: str, refusal: WorkerExpired) -> None:
        """Record that a broker refused ``worker_id`` as dead (seen outside a heartbeat, too)."""
        self.expiry = refusal
        self.expired_id = worker_id

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            if not self.beat():
                return

    def beat(self) -> bool:
        """Send one heartbeat and note what it showed; False once beating must stop for good."""
        worker_id = self.worker_id()
        if worker_id == self.expired_id:
            return True  # refused as dead: nothing to renew until the loop registers again
        held = self.current
        slots = self.slots
        watched = slots.running() if slots is not None else []
        try:
            leases = self.client.keep_alive(worker_id)
        except DatabaseUnavailable as exc:
            logger.warning("heartbeat failed, retrying at the next beat: %s", exc)
            return True
        except WorkerExpired as exc:
            logger.warning("heartbeat refused: %s", exc)
            self.note_expired(worker_id, exc)
            self._note_lost(held)
            if slots is not None:
                slots.lose(watched)
            return True
        except Exception as exc:  # not swallowed: handed to the worker loop, which raises it
            logger.warning("heartbeat failed (%s): the worker stops after the step in hand", exc)
            self.failure = exc
            return False
        if held is not None and not _holds(leases, held):
            self._note_lost(held)
        if slots is not None:
            slots.check(watched, leases)
        return True

    def _note_lost(self, held: StepAssignment | None) -> None:
        if held is not None and held is self.current:  # still the step in hand after the beat
            self.lost = held


def _holds(leases: list[Lease], assignment: StepAssignment) -> bool:
    return any(
        lease.instance_id == assignment.instance_id
        and lease.step_name == assignment.step_name
        and lease.attempt == assignment.attempt
        for lease in leases
    )
