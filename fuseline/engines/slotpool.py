"""``SlotPool``: where a multi-slot worker's steps run, ``AsyncStep``s on one event loop, plain
steps on threads.

Async steps that wait on I/O are the reason for slots: a hundred of them
waiting together cost one thread and one event loop, not a hundred
threads. Plain steps cannot share a loop (they block it), so each runs on a
thread of its own; threads are started as the slots fill, up to one per
slot, and reused. Every thread here is a daemon, and so is the loop's: a
worker stopped at once (a second signal) must be able to exit without
waiting for the steps it abandons; their leases expire, or go back when the
worker deregisters.

The pool only runs steps: the worker loop (:mod:`.slots`) decides what to
start, and collects what finished through :meth:`SlotPool.finished`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from dataclasses import dataclass

from ..broker.base import StepAssignment
from ..workflow.lifecycle import StepLifecycle
from ..workflow.step import Step
from ..workflow.workflow import Workflow
from .assignment import Execution, run_assignment
from .async_assignment import run_assignment_async
from .slotleases import LeaseKey, lease_key

#: How long closing waits for the event loop's thread to end.
LOOP_JOIN_SECONDS = 5.0
#: How long stopping at once waits for the cancelled async steps to end.
ABANDON_SECONDS = 1.0


async def _cancel_all() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(eq=False)
class Slot:
    """One claimed step in a slot: what ran, and how it ended."""

    assignment: StepAssignment
    workflow: Workflow
    #: The finished run (None until it ends, or when the step raised a BaseException).
    execution: Execution | None = None
    #: A ``BaseException`` the step raised (``SystemExit``...): the worker stops at once.
    error: BaseException | None = None
    #: The async step's future on the loop (None for a plain step).
    future: concurrent.futures.Future[None] | None = None

    @property
    def key(self) -> LeaseKey:
        return lease_key(self.assignment)


class SlotPool:
    """Runs up to ``size`` steps at once; :meth:`finished` hands back those that ended.

    Call :meth:`start`, :meth:`finished` and :meth:`close` from one thread
    (the worker loop's). ``running`` counts the steps started whose end was
    not yet handed back.
    """

    def __init__(self, size: int, lifecycle: StepLifecycle) -> None:
        self.size = size
        self.running = 0
        self._lifecycle = lifecycle
        self._done: queue.SimpleQueue[Slot | None] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[Slot | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._plain = 0  # plain steps started, not yet handed back
        self._async: dict[Slot, None] = {}  # async steps started, not yet handed back
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        #: Steps whose before_all ran, as the loop's coroutines know (touched on the loop only).
        self._prepared: set[Step] = set()
        self._is_async: dict[Step, bool] = {}

    def start(self, slot: Slot) -> None:
        """Start the slot's step: on the event loop if it is async, else on a thread."""
        step = slot.workflow.step_for(slot.assignment.step_name)
        is_async = self._is_async.get(step)
        if is_async is None:
            is_async = self._is_async[step] = step.is_async
        self.running += 1
        if is_async:
            self._async[slot] = None
            slot.future = asyncio.run_coroutine_threadsafe(self._run_async(slot), self._event_loop())
        else:
            self._plain += 1
            if self._plain > len(self._threads):  # every plain step has a thread of its own
                thread = threading.Thread(target=self._serve, name="fuseline-slot", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._jobs.put(slot)

    def wake(self) -> None:
        """End a wait in :meth:`finished` early (safe from any thread)."""
        self._done.put(None)

    def finished(self, timeout: float | None) -> list[Slot]:
        """The slots whose step ended, waiting up to ``timeout`` seconds for the first one, or for
        :meth:`wake` (0: no wait)."""
        taken: list[Slot | None] = []
        try:
            taken.append(self._done.get(timeout=timeout) if timeout != 0 else self._done.get_nowait())
            while True:
                taken.append(self._done.get_nowait())
        except queue.Empty:
            pass
        ended = [slot for slot in taken if slot is not None]
        for slot in ended:
            self.running -= 1
            if slot.future is None:
                self._plain -= 1
            else:
                self._async.pop(slot, None)
        return ended

    def close(self) -> None:
        """Stop the threads and the loop once every step has ended (they are idle: nothing waits)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        loop, thread = self._loop, self._loop_thread
        self._loop = self._loop_thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(LOOP_JOIN_SECONDS)
        if thread.is_alive():  # a step blocked the loop: leave it to the daemon thread
            return
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    def abandon(self) -> None:
        """Stop at once: cancel the async steps, leave the threads to finish on their own."""
        for _ in self._threads:
            self._jobs.put(None)
        self._threads = []
        loop, self._loop, self._loop_thread = self._loop, None, None
        if loop is None:
            return
        stopped = asyncio.run_coroutine_threadsafe(_cancel_all(), loop)
        # Cancelled steps end at their next await; one that blocks the loop is left behind.
        with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            stopped.result(ABANDON_SECONDS)
        loop.call_soon_threadsafe(loop.stop)

    # -- where steps run ---------------------------------------------------------------------
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The pool's event loop, started on its own thread by the first async step."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="fuseline-slots-loop", daemon=True)
            thread.start()
            self._loop, self._loop_thread = loop, thread
        return self._loop

    async def _run_async(self, slot: Slot) -> None:
        try:
            slot.execution = await run_assignment_async(
                slot.workflow, slot.assignment, self._lifecycle, self._prepared
            )
        except BaseException as exc:  # handed to the worker loop, which raises it
            slot.error = exc
        finally:
            self._done.put(slot)

    def _serve(self) -> None:
        """A plain-step thread: run slots until told to stop (None)."""
        while True:
            slot = self._jobs.get()
            if slot is None:
                return
            try:
                slot.execution = run_assignment(
                    slot.workflow, slot.assignment, self._lifecycle, policy_retries=False
                )
            except BaseException as exc:  # handed to the worker loop, which raises it
                slot.error = exc
            self._done.put(slot)
