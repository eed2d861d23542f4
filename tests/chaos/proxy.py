"""A TCP proxy between fuseline and PostgreSQL that can cut the network or lose a reply.

It runs an asyncio loop in a background thread and forwards every
connection to the server (TCP, or the server's Unix socket):

- :meth:`cut` drops every open connection and refuses new ones (as a
  firewall that answers with resets) until :meth:`heal`;
- :meth:`lose_next_reply` lets the next request through (the next one that
  contains ``trigger``, when given), swallows the server's whole reply (up
  to a ReadyForQuery that leaves the session idle, after which the server
  says nothing more: every statement sent ran, and committed), then drops
  the connection: commits whose reply was lost;
- :meth:`freeze_on` goes silent (a blackhole, as a real partition) the
  moment a request containing ``trigger`` comes through, and stays silent:
  that request and everything after it are dropped in both directions and
  new connections get no answer, while every socket stays open, until
  :meth:`heal` resets them all.

Given a :class:`LinkShape` it is also a slow, lossy link: every chunk
waits ``delay_seconds`` in its direction before it is written, in order
(a round trip costs ``2 x delay_seconds``). TCP loses no bytes, so packet
loss shows as the stall the retransmission causes: each chunk is held,
with probability ``loss``, ``stall_seconds`` longer (a retransmission
timeout), and everything behind it in that direction waits too. The
counters say what crossed: ``chunks``, ``turns`` (a client chunk after
the server spoke, or the first of a connection: one round trip) and
``stalls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from dataclasses import dataclass, field

from sqlalchemy.engine import URL

#: The end of a reply after which the session is idle (not in a transaction): ReadyForQuery 'I'.
READY_IDLE = b"Z\x00\x00\x00\x05I"
#: Seconds without more data after which a swallowed reply is taken as complete.
QUIET_SECONDS = 0.3
_UNARMED = object()


@dataclass(frozen=True)
class LinkShape:
    """A slow, lossy link: one-way delay, the share of chunks lost, and what a loss costs."""

    #: Seconds each chunk waits in each direction (the round trip is twice this).
    delay_seconds: float
    #: Probability that a chunk is "lost" and held for a retransmission timeout.
    loss: float = 0.0
    #: How long a lost chunk (and all behind it in its direction) waits for its retransmission.
    stall_seconds: float = 0.25
    seed: int = 0

    @property
    def round_trip_seconds(self) -> float:
        return 2 * self.delay_seconds


class _DelayLine:
    """One direction of a shaped pair: chunks written in order, each once it is due."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self._last_due = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def put(self, data: bytes, due: float) -> None:
        # Never before the chunk ahead of it: a stall holds back everything behind it (TCP order).
        self._last_due = max(due, self._last_due)
        self._queue.put_nowait((self._last_due, data))

    async def close(self) -> None:
        """Write what is still in the line, then stop (the other end hung up after it)."""
        self._queue.put_nowait(None)
        await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (item := await self._queue.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                self._writer.write(data)
                await self._writer.drain()
        except OSError:
            pass  # the pair is going away


@dataclass(eq=False)
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    swallow: bool = False
    swallowed: bytearray = field(default_factory=bytearray)
    #: The delay lines towards the server and towards the client (a shaped link only).
    up: _DelayLine | None = None
    down: _DelayLine | None = None
    #: Whether the server spoke since the client's last chunk (the next one is a new round trip).
    answered: bool = True

    def abort(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class TcpProxy:
    def __init__(self, target: URL, shape: LinkShape | None = None) -> None:
        socket_dir = target.query.get("host")
        if target.host is None and socket_dir:
            self._unix = f"{socket_dir}/.s.PGSQL.{target.port or 5432}"
            self._tcp = None
        else:
            self._unix = None
            self._tcp = (target.host or "127.0.0.1", target.port or 5432)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task] = set()
        self._cut = False
        self._trigger: object = _UNARMED
        self._freeze_trigger: bytes | None = None
        self.frozen = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0
        self.refused = 0
        self.replies_lost = 0
        self.shape = shape
        self._random = random.Random(shape.seed if shape is not None else 0)
        self.chunks = 0
        self.turns = 0
        self.stalls = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self.port = self._call(self._serve())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url_for(self, url: URL) -> URL:
        """``url`` (a database on the proxied server) reached through this proxy."""
        query = {k: v for k, v in url.query.items() if k != "host"}
        return url.set(host="127.0.0.1", port=self.port, query=query)

    # -- control, from the test thread -------------------------------------------------------
    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`heal`."""
        self._call(self._set_cut(True))

    def heal(self) -> None:
        self._call(self._set_cut(False))

    def freeze_on(self, trigger: bytes) -> None:
        self._call(self._arm_freeze(trigger))

    def lose_next_reply(self, trigger: bytes | None = None) -> None:
        self._call(self._arm(trigger))

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # -- the loop ----------------------------------------------------------------------------
    async def _serve(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        if cut or self.frozen.is_set():
            for pair in list(self._pairs):
                pair.abort()
        if not cut:
            self._freeze_trigger = None
            self.frozen.clear()

    async def _arm_freeze(self, trigger: bytes) -> None:
        self._freeze_trigger = trigger

    async def _arm(self, trigger: bytes | None) -> None:
        self._trigger = trigger

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(client_reader, client_writer)
        finally:
            self._tasks.discard(task)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._cut:
            self.refused += 1
            client_writer.transport.abort()
            return
        if self.frozen.is_set():  # no answer at all: the client waits for its connect timeout
            self.refused += 1
            while await client_reader.read(65536):
                pass
            return
        try:
            if self._unix is not None:
                server_reader, server_writer = await asyncio.open_unix_connection(self._unix)
            else:
                server_reader, server_writer = await asyncio.open_connection(*self._tcp)  # type: ignore[misc]
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        pair = _Pair(client_writer, server_writer)
        if self.shape is not None:
            pair.up, pair.down = _DelayLine(server_writer), _DelayLine(client_writer)
            self._tasks.update((pair.up.task, pair.down.task))
            for line in (pair.up.task, pair.down.task):
                line.add_done_callback(self._tasks.discard)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._upstream(client_reader, pair),
                self._downstream(server_reader, pair),
                return_exceptions=True,
            )
        finally:
            self._pairs.discard(pair)
            pair.abort()

    async def _upstream(self, reader: asyncio.StreamReader, pair: _Pair) -> None:
        try:
            while data := await reader.read(65536):
                if self._freeze_trigger is not None and self._freeze_trigger in data:
                    self.frozen.set()
                if self.frozen.is_set():
                    continue
                trigger = self._trigger
                if trigger is not _UNARMED and (trigger is None or trigger in data):
                    self._trigger = _UNARMED
                    pair.swallow = True
                self.chunks += 1
                if pair.answered:
                    self.turns += 1
                    pair.answered = False
                if pair.up is not None:
                    pair.up.put(data, self._due())
                    continue
                pair.server.write(data)
                await pair.server.drain()
            if pair.up is not None:
                await pair.up.close()
        except OSError:
            pass  # either side went away: the pair is dropped below
        finally:
            pair.abort()

    async def _downstream(self, reader: asyncio.StreamReader, pair: _Pair) -> None:
        try:
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    continue
                if pair.swallow:
                    pair.swallowed += data
                    # The reply is complete when the session is idle and the server sends no
                    # more (a pipeline has one ReadyForQuery per sync).
                    while pair.swallowed.endswith(READY_IDLE):
                        try:
                            more = await asyncio.wait_for(reader.read(65536), QUIET_SECONDS)
                        except asyncio.TimeoutError:
                            self.replies_lost += 1
                            return
                        if not more:
                            return
                        pair.swallowed += more
                    continue
                self.chunks += 1
                pair.answered = True
                if pair.down is not None:
                    pair.down.put(data, self._due())
                    continue
                pair.client.write(data)
                await pair.client.drain()
            if pair.down is not None:
                await pair.down.close()
        except OSError:
            pass
        finally:
            pair.abort()

    def _due(self) -> float:
        """When a chunk read now is written on a shaped link."""
        assert self.shape is not None
        due = self._loop.time() + self.shape.delay_seconds
        if self.shape.loss and self._random.random() < self.shape.loss:
            self.stalls += 1
            due += self.shape.stall_seconds
        return due
