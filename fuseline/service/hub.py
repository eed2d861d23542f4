"""Long-polled waits for work: one listener per server process, however many workers wait.

A worker behind the server waits for work the way a database worker waits
on LISTEN, but it must not cost a database connection or a thread each: 200
idle HTTP workers would otherwise need 200 of both. So one thread per server
process waits on the broker (PostgreSQL's LISTEN connection, or SQLite's
short poll) and counts the wake-ups in a *generation*; each waiting request
is an asyncio future that the thread resolves when the generation moves.

Workers wait by *claiming with a wait* (:meth:`WorkHub.claim_or_wait`): the
request claims, and when nothing is there it joins a queue of waiting
claimers before the claim, so an announcement between the two still wakes
it. An announcement wakes the first waiter only, and a woken claimer that
got work wakes two more (there may be more work), while one that got nothing
stops the chain: a burst of work reaches 200 idle workers in a few rounds,
and one new step costs one claim, not 200 (a thundering herd).

The plain wait (:meth:`WorkHub.wait`) is kept for clients that claim
separately: it passes the generation it last saw, and if work was announced
between its empty claim and its wait, the generation has already moved and
the wait returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("fuseline.server")

#: How long the listening thread waits on the broker per turn (a stop takes at most this).
LISTEN_SLICE_SECONDS = 1.0


class WorkHub:
    """Counts work announcements and wakes the requests waiting for the next one."""

    def __init__(self, wait_for_work: Callable[[float], bool]) -> None:
        self._wait_for_work = wait_for_work
        self.generation = 0
        self._waiters: set[asyncio.Future[None]] = set()
        #: Claimers waiting for work, first come first woken.
        self._claimers: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._listen, name="fuseline-work-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening. The thread is not waited for (it may be a second into a wait on
        the database); it is a daemon, and ends with its next slice or with the process."""
        self._stopping.set()

    async def wait(self, since: int | None, timeout: float) -> bool:
        """True once the generation is past ``since`` (at once if it already is), False after
        ``timeout`` seconds. ``since=None`` (a worker's first wait) answers True at once."""
        if since is None or self.generation != since:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except asyncio.TimeoutError:
            return self.generation != since
        finally:
            self._waiters.discard(future)

    async def claim_or_wait(self, claim: Callable[[], Awaitable[list[T]]], timeout: float) -> list[T]:
        """What ``claim`` returns, claiming again each time this waiter is woken, until it
        returns something or ``timeout`` seconds pass (then ``[]``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            turn: asyncio.Future[None] = loop.create_future()
            self._claimers.append(turn)  # before the claim: an announcement from now on wakes it
            try:
                claimed = await claim()
            except BaseException:
                self._leave(turn)
                raise
            if claimed:
                self._leave(turn)
                self._wake_claimers(2)  # there may be more: pass it on
                return claimed
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._leave(turn)
                return []
            try:
                await asyncio.wait_for(asyncio.shield(turn), remaining)
            except asyncio.TimeoutError:
                self._leave(turn)
                return []

    def _leave(self, turn: asyncio.Future[None]) -> None:
        """Leave the queue; a wake-up this claimer will not use goes to the next one."""
        with contextlib.suppress(ValueError):  # already woken, so already out of the queue
            self._claimers.remove(turn)
        if turn.done():
            self._wake_claimers(1)

    def _wake_claimers(self, count: int) -> None:
        while count > 0 and self._claimers:
            turn = self._claimers.popleft()
            if not turn.done():
                turn.set_result(None)
                count -= 1

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                announced = self._wait_for_work(LISTEN_SLICE_SECONDS)
            except Exception as exc:  # the database is away: waiting workers still poll
                if self._stopping.is_set():
                    return
                logger.warning("waiting for work announcements failed: %s", exc)
                self._stopping.wait(LISTEN_SLICE_SECONDS)
                continue
            if announced and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.generation += 1
        self._wake_claimers(1)
        waiters, self._waiters = self._waiters, set()
        for future in waiters:
            if not future.done():
                future.set_result(None)
