"""The backend API's asyncio shell: HTTP/1.1 on the API port, the event stream, kicks.

Theory of operation
-------------------
Each connection carries one request (``Connection: close``). The shell reads the
request's head (at most :data:`~workers.api.MAX_HEAD_BYTES`, within
:data:`OPEN_TIMEOUT`), refuses a stranger before reading any body
(:meth:`~workers.api.BackendApi.authorised`), reads a body of at most
:data:`~workers.api.MAX_BODY_BYTES` when it has a ``Content-Length``, and hands the
request to :class:`~workers.api.BackendApi`, which decides. A request that is not
HTTP/1.1 or HTTP/1.0 is not answered: the connection is closed. Nothing a caller sends
can raise out of a handler (every way a connection can fail ends it quietly).

* An :class:`~workers.api.Answer` is written and the connection closed.
* A kick (:class:`~workers.api.KickAsked`) goes to the coordinator as an
  :class:`~shared.backbone.Eject`; its :class:`~shared.backbone.EjectDone` (or
  :data:`KICK_TIMEOUT` without one: ``unavailable``) is the answer.
* The event stream (:class:`~workers.api.OpenStream`): :class:`~workers.feed.Feed`
  decides what each consumer is due; one task per consumer writes it. While the
  consumer's transport holds more than :data:`TRANSPORT_HIGH` unsent bytes, its events
  wait in the ring, and a consumer the ring leaves behind is cut off (the feed
  decides). Every :attr:`~workers.api.ApiOptions.events_keepalive`
  seconds without a frame, a comment line keeps proxies from closing the stream.

The worker's shell (:mod:`workers.server`) hands every update applied in order
(:meth:`ApiServer.published`) and every resync (:meth:`ApiServer.resynced`) on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from prometheus_client import Counter

from shared import backbone as bb
from shared import events, logs, metrics
from workers import api, stats
from workers.api import Answer, ApiOptions, BackendApi, Head, KickAsked, OpenStream
from workers.feed import KEEPALIVE_FRAME, Consumer, CutOff, Feed
from workers.replica import Forward, ReplicaView

log = logging.getLogger("workers")

OPEN_TIMEOUT: Final = 5.0
"""Seconds an API connection may take to send its request (head and body)."""
MAX_READING: Final = 256
"""API connections whose request is still being read, at most; one more is dropped at
accept. A peer that opens connections and sends slowly holds no more than this many
sockets (each for at most :data:`OPEN_TIMEOUT`), so it cannot use up the file
descriptors the worker's public port shares; answered requests and streams do not
count."""
KICK_TIMEOUT: Final = 2.0
"""Seconds to wait for the coordinator's answer to a kick before answering 503."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a stream's last bytes may take to leave before the connection is dropped."""
TRANSPORT_HIGH: Final = 64 * 1024
"""Unsent bytes a consumer's transport may hold before its events wait in the ring
(a quarter of ``--events-ring-bytes`` when that is less)."""
LISTEN_BACKLOG: Final = 128

_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\n"
)


class ApiServer:
    """The API port of one worker."""

    def __init__(
        self,
        backend: BackendApi,
        options: ApiOptions,
        *,
        replica: ReplicaView,
        reachable: Any,
        up: Any,
        send_buffer: int,
    ) -> None:
        """``reachable(now)``: whether the worker hears its coordinator; ``up(msg)``:
        queue a message for the coordinator; ``send_buffer``: the kernel send buffer to
        ask for each consumer's socket (``--send-buffer-bytes``, as for clients)."""
        self.backend = backend
        self.options = options
        self._replica = replica
        self._reachable = reachable
        self._up = up
        self._send_buffer = send_buffer
        self._high = min(TRANSPORT_HIGH, options.events_ring_bytes // 4)
        self.feed = Feed(
            ring_bytes=options.events_ring_bytes,
            ring_age=options.events_ring_age,
            max_consumers=options.events_max_consumers,
        )
        self._wake: dict[Consumer, asyncio.Event] = {}
        self._kicks: dict[int, asyncio.Future[str]] = {}
        self._requests = itertools.count(1)
        self._reading = 0  # connections whose request is being read (MAX_READING)
        self._servers: list[asyncio.Server] = []
        self._tally = metrics.Tally()
        self._resets = {r: metrics.EVENTS_RESET.labels(r) for r in metrics.EVENTS_RESETS}
        self._cuts = {r: metrics.EVENTS_CUT.labels(r) for r in metrics.EVENTS_CUT_OFF}

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def listen(self, hosts: Sequence[str], port: int, tls: ssl.SSLContext | None) -> None:
        """Listen on ``port`` of ``hosts`` (shared with the other workers); raises
        :class:`OSError` when it cannot."""
        server = await asyncio.start_server(
            self._serve,
            list(hosts),
            port,
            reuse_port=True,
            ssl=tls,
            limit=api.MAX_HEAD_BYTES,
            backlog=LISTEN_BACKLOG,
        )
        self._servers.append(server)

    async def stop(self) -> None:
        """Stop listening; cut every consumer off (``going_away``) and let the streams
        end within :data:`CLOSE_TIMEOUT`."""
        for server in self._servers:
            server.close()
        self._wake_all(self.feed.stop_all(CutOff.GOING_AWAY))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 0.5):
                while self.feed.consumers:
                    await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ the worker's state

    def published(self, updates: Sequence[Forward]) -> None:
        """Updates the worker applied in order: one event each, to every consumer."""
        now = self._now()
        for forward in updates:
            if forward.update is not None:
                self._wake_all(self.feed.published(events.from_update(forward.update), now))

    def resynced(self) -> None:
        """The worker is live from a snapshot: consumers may need a reset."""
        epoch = self._replica.epoch
        if epoch is not None:
            self._wake_all(self.feed.resynced(epoch, self._replica.seq))

    def tick(self, now: float) -> None:
        self._wake_all(self.feed.trim(now))

    def on_eject_done(self, msg: bb.Message) -> None:
        assert isinstance(msg, bb.EjectDone)
        future = self._kicks.get(msg.request)
        if future is not None and not future.done():
            future.set_result(msg.outcome)

    def _wake_all(self, consumers: Sequence[Consumer]) -> None:
        for consumer in consumers:
            wake = self._wake.get(consumer)
            if wake is not None:
                wake.set()
        self._record()

    def _record(self) -> None:
        for reason, counter in self._resets.items():
            self._feed_tally(counter, self.feed.resets[reason])
        for reason, counter in self._cuts.items():
            self._feed_tally(counter, self.feed.cut_offs[reason])

    def _feed_tally(self, counter: Counter, total: int) -> None:
        self._tally.feed(counter, total)

    # ------------------------------------------------------------------ requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._reading < MAX_READING:
                await self._request(reader, writer)
        except (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass  # the caller went away, sent too much, or too slowly: nothing to answer
        finally:
            writer.transport.abort()  # answered (and drained), or nothing to say

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reading += 1
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                raw = await reader.readuntil(b"\r\n\r\n")
                head = api.parse_head(raw[:-4])
                if head is None:
                    return
                authorization = head.one("authorization")
                if not self.backend.authorised(authorization):
                    await _respond(writer, api.UNAUTHORIZED)
                    return
                length = api.body_length(head)
                if isinstance(length, Answer):
                    await _respond(writer, length)
                    return
                body = await reader.readexactly(length) if length else b""
        finally:
            self._reading -= 1
        ids = head.all("last-event-id")
        if len(ids) > 1:
            await _respond(
                writer, api.bad_request("invalid_last_event_id", "Last-Event-ID given twice")
            )
            return
        decision = self.backend.answer(
            head.method,
            head.path,
            authorization,
            self._replica,
            reachable=self._reachable(self._now()),
            body=body,
            last_event_id=ids[0] if ids else None,
        )
        if isinstance(decision, Answer):
            if head.path == api.LOOKUP_PATH and decision.status == HTTPStatus.OK:
                metrics.LOOKUPS.inc()
                metrics.LOOKUP_KEYS.inc(decision.body.count(b'"publicKey"'))
            await _respond(writer, decision)
        elif isinstance(decision, KickAsked):
            await _respond(writer, await self._kick(decision))
        else:
            await self._stream(decision, reader, writer, head)

    async def _kick(self, kick: KickAsked) -> Answer:
        request = next(self._requests)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._kicks[request] = future
        self._up(bb.Eject(request, kick.key, kick.reason))
        try:
            async with asyncio.timeout(KICK_TIMEOUT):
                outcome = await future
        except TimeoutError:
            outcome = "unavailable"
        finally:
            del self._kicks[request]
        metrics.KICKS.labels(outcome).inc()
        return self.backend.kicked(kick.key, outcome)

    # ------------------------------------------------------------------ the stream

    async def _stream(
        self,
        opening: OpenStream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: Head,
    ) -> None:
        consumer = self.feed.open(opening.after, self._now())
        if consumer is None:
            await _respond(writer, api.TOO_MANY_CONSUMERS)
            return
        stats.api_answered(HTTPStatus.OK)
        wake = self._wake[consumer] = asyncio.Event()
        metrics.EVENTS_CONSUMERS.set(len(self.feed.consumers))
        self._record()
        gone = asyncio.create_task(_until_eof(reader, wake))
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None and self._send_buffer:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        try:
            writer.write(_STREAM_HEAD)
            await self._follow(consumer, wake, transport, writer, gone)
        finally:
            gone.cancel()
            self.feed.close(consumer)
            del self._wake[consumer]
            metrics.EVENTS_CONSUMERS.set(len(self.feed.consumers))

    async def _follow(
        self,
        consumer: Consumer,
        wake: asyncio.Event,
        transport: asyncio.WriteTransport,
        writer: asyncio.StreamWriter,
        gone: asyncio.Task[None],
    ) -> None:
        keepalive = self.options.events_keepalive
        high = self._high
        transport.set_write_buffer_limits(high=high)  # drain() waits while above it
        while not gone.done() and not transport.is_closing():
            room = high - transport.get_write_buffer_size()
            if consumer.cut_off is not None or room > 0:
                frames = consumer.take(max(room, 0))
                if frames:
                    writer.write(b"".join(frames))
                    metrics.EVENTS_SENT.inc(sum(1 for f in frames if f.startswith(b"id: ")))
            if consumer.cut_off is not None:
                log.info(
                    "event-stream consumer cut off: %s",
                    consumer.cut_off,
                    extra=logs.event("events_cut_off", reason=consumer.cut_off),
                )
                writer.close()  # once what it holds is written, if that is soon
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await writer.wait_closed()
                return
            if consumer.due and transport.get_write_buffer_size() < high:
                await asyncio.sleep(0)  # more to write at once: let the loop breathe
                continue
            wake.clear()
            try:
                async with asyncio.timeout(keepalive):
                    if transport.get_write_buffer_size() >= high:
                        await _first(writer.drain(), wake.wait())
                    else:
                        await wake.wait()
            except TimeoutError:
                if transport.get_write_buffer_size() < high:
                    writer.write(KEEPALIVE_FRAME)


async def _first(*waits: Any) -> None:
    """Wait until the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_eof(reader: asyncio.StreamReader, wake: asyncio.Event) -> None:
    """Read (and ignore) what a consumer sends until it closes; then wake its writer."""
    with contextlib.suppress(OSError, ValueError):
        while await reader.read(4096):
            pass
    wake.set()


async def _respond(writer: asyncio.StreamWriter, answer: Answer) -> None:
    """Write ``answer`` (JSON, ``Connection: close``) and let it leave."""
    stats.api_answered(answer.status)
    status = answer.status
    lines = [
        f"HTTP/1.1 {int(status)} {status.phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(answer.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + answer.body)
    async with asyncio.timeout(CLOSE_TIMEOUT):
        await writer.drain()
        writer.close()
        await writer.wait_closed()
