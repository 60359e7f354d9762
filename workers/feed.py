"""The event stream's decisions: the worker's ring of recent events and each consumer's
place in it (``GET /v1/events``; pure, no I/O).

Theory of operation
-------------------
Every lobby update the worker applies in order becomes one event
(:mod:`shared.events`), framed once as Server-Sent Events bytes (:func:`event_frame`) and
kept in the :class:`Feed`'s ring; each consumer of the stream is a :class:`Consumer`
that holds the frames due to it until the shell writes them.

* **The ring** holds the frames of the current epoch's updates after ``base`` up to
  ``newest``, each with the time it was applied, at most ``ring_bytes`` of frames and
  none older than ``ring_age``: past either bound the oldest go and ``base`` moves past
  them. A resync that moved the worker's state anywhere but ``newest`` (a gap healed by
  a snapshot, a new epoch) starts the ring afresh at the new state.
* **Where a consumer starts** (:meth:`Feed.open`), from its ``Last-Event-ID``
  ``(epoch, seq)``: in the ring's epoch with ``base <= seq <= newest``, the frames after
  ``seq`` are queued and it continues from there with no reset. In the ring's epoch
  with ``seq`` above ``newest`` (it read ``/v1/lobby`` from a worker a step ahead), it
  waits for the worker to get there and is sent what follows ``seq``. Otherwise it is
  sent a **reset**: ``event: reset`` whose data is ``{"epoch", "seq", "reason"}``,
  meaning "the next event is ``seq + 1`` of ``epoch``; repair your view from
  ``GET /v1/lobby`` as of ``seq`` or later, then continue". Reasons: ``start`` (no
  ``Last-Event-ID``), ``too_old`` (the ring no longer holds what followed it),
  ``epoch`` (another epoch: the coordinator restarted), ``gap`` (the worker itself lost
  updates and resynced). A reset carries no ``id``, so a consumer that reconnects before
  it repaired its view still names its old id and is told again.
* **Later**, each event goes to every consumer whose position it follows
  (:meth:`Feed.published`); a resync that started the ring afresh sends every consumer
  a reset. So a consumer sees each event of an epoch once, in order, with no gap, or a
  reset that says where it must repair from.
* **A slow consumer** holds at most ``consumer_bytes`` and ``consumer_events`` frames
  not yet written: the frame that would go past either bound cuts it off instead
  (:attr:`Consumer.cut_off` says why; its queue is replaced by a final ``event:
  cut_off`` naming the reason, and the shell closes the connection once that is
  written). It never grows the worker: what it holds is charged to the memory budget
  (:attr:`Feed.memory`) and bounded.
* **At most** ``max_consumers`` at once per worker (:meth:`Feed.open` returns
  ``None`` past it: the shell answers 503 naming the reason).

The shell (:mod:`workers.apiserver`) writes what :meth:`Consumer.take` hands it, and a
keep-alive comment (:data:`KEEPALIVE`) when nothing was written for a while, so proxies
do not cut an idle stream.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass
from typing import Final

from shared import events

RING_BYTES: Final = 8 * 1024 * 1024
"""Bytes of event frames a worker keeps to resume consumers from, by default."""
RING_AGE: Final = 300.0
"""Seconds an event is kept to resume consumers from, by default."""
CONSUMER_BYTES: Final = 4 * 1024 * 1024
"""Bytes of frames one consumer may have waiting to be written, by default."""
CONSUMER_EVENTS: Final = 10_000
"""Frames one consumer may have waiting to be written."""
MAX_CONSUMERS: Final = 16
"""Consumers of the stream one worker serves at once, by default."""
KEEPALIVE: Final = 15.0
"""Seconds of silence after which the stream gets a comment line (proxies cut idle
connections after 30 to 60 s by default)."""
KEEPALIVE_FRAME: Final = b": keep-alive\n\n"
FRAME_OVERHEAD: Final = 64
"""Bytes charged per held frame besides its own (the deque slot, the tuple)."""


class Reset:
    """Why a consumer is sent a reset."""

    START: Final = "start"
    TOO_OLD: Final = "too_old"
    EPOCH: Final = "epoch"
    GAP: Final = "gap"


class CutOff:
    """Why a consumer is cut off."""

    SLOW_CONSUMER: Final = "slow_consumer"
    GOING_AWAY: Final = "going_away"


def event_frame(event: events.Event) -> bytes:
    """The SSE frame of one event: its id and its JSON (:mod:`shared.events`)."""
    return b"id: %s\ndata: %s\n\n" % (event.id.encode(), events.encode(event))


def reset_frame(epoch: str, seq: int, reason: str) -> bytes:
    data = json.dumps({"epoch": epoch, "seq": seq, "reason": reason}, separators=(",", ":"))
    return b"event: reset\ndata: %s\n\n" % data.encode()


def cut_off_frame(reason: str) -> bytes:
    return b'event: cut_off\ndata: {"reason":"%s"}\n\n' % reason.encode()


@dataclass(slots=True)
class _Held:
    seq: int
    at: float
    frame: bytes


class Consumer:
    """One consumer's place in the stream and the frames due to it."""

    __slots__ = ("_bytes", "_frames", "cut_off", "epoch", "feed", "position")

    def __init__(self, feed: Feed, epoch: str, position: int) -> None:
        self.feed = feed
        self.epoch = epoch
        self.position = position
        """The seq of the last event queued (or the reset's)."""
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self.cut_off: str | None = None
        """Why it was cut off (its last frame says so), or None."""

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)

    def take(self) -> list[bytes]:
        """The frames to write now, in order (the queue empties)."""
        frames = list(self._frames)
        self._frames.clear()
        self.feed.charged -= self._bytes
        self._bytes = 0
        return frames

    def _queue(self, frame: bytes) -> None:
        if self.cut_off is not None:
            return
        feed = self.feed
        size = len(frame) + FRAME_OVERHEAD
        if self._bytes + size > feed.consumer_bytes or len(self._frames) >= feed.consumer_events:
            self.stop(CutOff.SLOW_CONSUMER)
            return
        self._frames.append(frame)
        self._bytes += size
        feed.charged += size

    def stop(self, reason: str) -> None:
        """Cut it off: what it holds is dropped for the final frame naming ``reason``."""
        if self.cut_off is not None:
            return
        self.take()
        self.cut_off = reason
        self.feed.cut_offs[reason] += 1
        frame = cut_off_frame(reason)
        self._frames.append(frame)
        self._bytes = len(frame)
        self.feed.charged += self._bytes

    def _reset(self, epoch: str, seq: int, reason: str) -> None:
        self.epoch, self.position = epoch, seq
        self.feed.resets[reason] += 1
        self._queue(reset_frame(epoch, seq, reason))

    def _offer(self, epoch: str, held: _Held) -> None:
        if epoch != self.epoch or held.seq <= self.position:
            return  # another epoch (a reset comes first), or it waits for a later one
        if held.seq != self.position + 1:
            self._reset(epoch, held.seq - 1, Reset.GAP)  # never happens: the ring follows on
        self.position = held.seq
        self._queue(held.frame)


class Feed:
    """The ring of recent events and the consumers following it (see the module
    docstring)."""

    def __init__(
        self,
        *,
        ring_bytes: int = RING_BYTES,
        ring_age: float = RING_AGE,
        consumer_bytes: int = CONSUMER_BYTES,
        consumer_events: int = CONSUMER_EVENTS,
        max_consumers: int = MAX_CONSUMERS,
    ) -> None:
        self.ring_bytes, self.ring_age = ring_bytes, ring_age
        self.consumer_bytes, self.consumer_events = consumer_bytes, consumer_events
        self.max_consumers = max_consumers
        self.epoch: str | None = None
        self.base = 0
        self._held: deque[_Held] = deque()
        self.held_bytes = 0
        self.charged = 0
        """Bytes the consumers' queues hold."""
        self.consumers: set[Consumer] = set()
        self.resets: Counter[str] = Counter()
        """Resets queued, by reason (:class:`Reset`)."""
        self.cut_offs: Counter[str] = Counter()
        """Consumers cut off, by reason (:class:`CutOff`)."""

    @property
    def newest(self) -> int:
        return self.base + len(self._held)

    @property
    def memory(self) -> int:
        """Bytes to charge to the worker's memory budget: the ring and the queues."""
        return self.held_bytes + self.charged

    # ------------------------------------------------------------------ the worker's state

    def resynced(self, epoch: str, seq: int) -> list[Consumer]:
        """The worker is live at ``(epoch, seq)`` from a snapshot. Unless that is where the
        ring stands, the ring starts afresh there and every consumer is sent a reset;
        returns the consumers given something to write."""
        if epoch == self.epoch and seq == self.newest:
            return []
        reason = Reset.GAP if epoch == self.epoch else Reset.EPOCH
        self.epoch, self.base = epoch, seq
        self._held.clear()
        self.held_bytes = 0
        for consumer in self.consumers:
            consumer._reset(epoch, seq, reason)
        return list(self.consumers)

    def published(self, event: events.Event, now: float) -> list[Consumer]:
        """The worker applied ``event`` in order: keep its frame, queue it for every
        consumer it follows; returns the consumers given something to write."""
        if event.epoch == self.epoch and event.seq <= self.newest:
            return []  # a duplicate (never happens: the replica forwards each once)
        touched = []
        if event.epoch != self.epoch or event.seq != self.newest + 1:
            touched = self.resynced(event.epoch, event.seq - 1)  # never happens in order
        held = _Held(event.seq, now, event_frame(event))
        self._held.append(held)
        self.held_bytes += len(held.frame) + FRAME_OVERHEAD
        while self._held and self.held_bytes > self.ring_bytes:
            self._drop_oldest()
        self.trim(now)
        for consumer in self.consumers:
            consumer._offer(event.epoch, held)
        return list(self.consumers) if self.consumers else touched

    def trim(self, now: float) -> None:
        """Drop the events older than ``ring_age`` at ``now``."""
        oldest = now - self.ring_age
        while self._held and self._held[0].at < oldest:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        gone = self._held.popleft()
        self.held_bytes -= len(gone.frame) + FRAME_OVERHEAD
        self.base = gone.seq

    # ------------------------------------------------------------------ consumers

    def open(self, after: tuple[str, int] | None, now: float) -> Consumer | None:
        """A new consumer that last saw event ``after`` (``None``: none), queued what it
        is due first; ``None`` when ``max_consumers`` are connected already. Call only
        while the worker is live (after :meth:`resynced`)."""
        if len(self.consumers) >= self.max_consumers:
            return None
        assert self.epoch is not None
        self.trim(now)
        epoch, newest = self.epoch, self.newest
        consumer = Consumer(self, epoch, newest)
        self.consumers.add(consumer)
        if after is None:
            consumer._reset(epoch, newest, Reset.START)
        elif after[0] != epoch:
            consumer._reset(epoch, newest, Reset.EPOCH)
        elif after[1] < self.base:
            consumer._reset(epoch, newest, Reset.TOO_OLD)
        else:
            consumer.position = after[1]
            for held in self._held:
                consumer._offer(epoch, held)
        return consumer

    def close(self, consumer: Consumer) -> None:
        """The consumer's connection ended: forget it and what it held."""
        consumer.take()
        self.consumers.discard(consumer)

    def stop_all(self, reason: str) -> list[Consumer]:
        """Cut every consumer off with ``reason`` (the worker is stopping)."""
        for consumer in self.consumers:
            consumer.stop(reason)
        return list(self.consumers)
