"""The event stream's decisions: the worker's ring of recent events and each consumer's
place in it (``GET /v1/events``; pure, no I/O).

Theory of operation
-------------------
Every lobby update the worker applies in order becomes one event
(:mod:`shared.events`), framed once as Server-Sent Events bytes (:func:`event_frame`) and
kept in the :class:`Feed`'s ring; each consumer of the stream is a :class:`Consumer`,
which holds nothing but its place in the ring (and a reset or cut-off frame due to it):
every consumer is written the same bytes, from the ring itself.

* **The ring** holds the frames of the current epoch's updates after ``base`` up to
  ``newest``, each with the time it was applied, at most ``ring_bytes`` of frames and
  :data:`RING_EVENTS` of them, none older than ``ring_age``: past any bound the oldest
  go and ``base`` moves past them. A resync that moved the worker's state anywhere
  but ``newest`` (a gap healed by a snapshot, a new epoch) starts the ring afresh at
  the new state.
* **Where a consumer starts** (:meth:`Feed.open`), from its ``Last-Event-ID``
  ``(epoch, seq)``: in the ring's epoch with ``base <= seq <= newest``, the frames after
  ``seq`` are its due and it continues from there with no reset. In the ring's epoch
  with ``seq`` above ``newest`` (it read ``/v1/lobby`` from a worker a step ahead), it
  waits for the worker to get there and is sent what follows ``seq``. Otherwise it is
  sent a **reset**: ``event: reset`` whose data is ``{"epoch", "seq", "reason"}``,
  meaning "the next event is ``seq + 1`` of ``epoch``; repair your view from
  ``GET /v1/lobby`` as of ``seq`` or later, then continue". Reasons: ``start`` (no
  ``Last-Event-ID``), ``too_old`` (the ring no longer holds what followed it),
  ``epoch`` (another epoch: the coordinator restarted), ``gap`` (the worker itself lost
  updates and resynced). A reset carries no ``id``, so a consumer that reconnects before
  it repaired its view still names its old id and is told again.
* **Later**, :meth:`Consumer.take` hands out the events after the consumer's position,
  in order, as much as its transport has room for; a resync that started the ring
  afresh sends every consumer a reset. So a consumer sees each event of an epoch
  once, in order, with no gap, or a reset that says where it must repair from.
* **A slow consumer** is one the ring leaves behind: when the ring drops an event a
  consumer has not been handed yet (past its bytes, count or age), the consumer is cut
  off (:attr:`Consumer.cut_off` says why; all it is due then is a final ``event:
  cut_off`` naming the reason, and the shell closes the connection once that is
  written). So its backlog is bounded like the ring, in bytes, count and age, and it
  never grows the worker: the ring is charged to the memory budget
  (:attr:`Feed.memory`) once, however many consumers read it.
* **At most** ``max_consumers`` at once per worker (:meth:`Feed.open` returns
  ``None`` past it: the shell answers 503 naming the reason).

The shell (:mod:`workers.apiserver`) writes what :meth:`Consumer.take` hands it, and a
keep-alive comment (:data:`KEEPALIVE`) when nothing was written for a while, so proxies
do not cut an idle stream.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Final

from shared import events

RING_BYTES: Final = 8 * 1024 * 1024
"""Bytes of event frames a worker keeps to resume consumers from, by default."""
RING_AGE: Final = 300.0
"""Seconds an event is kept to resume consumers from, by default."""
RING_EVENTS: Final = 100_000
"""Events the ring holds at most, whatever their size."""
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
    """One consumer's place in the stream: the seq of the last event handed to it, and
    the reset or cut-off frame it is due first, if any."""

    __slots__ = ("_control", "cut_off", "epoch", "feed", "position")

    def __init__(self, feed: Feed, epoch: str, position: int) -> None:
        self.feed = feed
        self.epoch = epoch
        self.position = position
        """The seq of the last event handed out (or of the reset)."""
        self._control: bytes | None = None
        self.cut_off: str | None = None
        """Why it was cut off (its last frame says so), or None."""

    @property
    def due(self) -> bool:
        """Whether :meth:`take` has something for it now."""
        feed = self.feed
        return self._control is not None or (
            self.epoch == feed.epoch and self.position < feed.newest
        )

    def take(self, budget: int) -> list[bytes]:
        """The frames to write now, in order: a reset or cut-off first, then the events
        after its position, about ``budget`` bytes of them (at least one)."""
        frames = [] if self._control is None else [self._control]
        self._control = None
        if self.cut_off is not None:
            return frames
        feed = self.feed
        if self.epoch != feed.epoch or self.position >= feed.newest:
            return frames
        size = 0
        for held in feed.after(self.position):
            if frames and size + len(held.frame) > budget:
                break
            frames.append(held.frame)
            size += len(held.frame)
            self.position = held.seq
        return frames

    def stop(self, reason: str) -> None:
        """Cut it off: all it is due now is the final frame naming ``reason``."""
        if self.cut_off is None:
            self.cut_off = reason
            self.feed.cut_offs[reason] += 1
            self._control = cut_off_frame(reason)

    def _reset(self, epoch: str, seq: int, reason: str) -> None:
        if self.cut_off is None:
            self.epoch, self.position = epoch, seq
            self.feed.resets[reason] += 1
            self._control = reset_frame(epoch, seq, reason)


class Feed:
    """The ring of recent events and the consumers following it (see the module
    docstring)."""

    def __init__(
        self,
        *,
        ring_bytes: int = RING_BYTES,
        ring_age: float = RING_AGE,
        ring_events: int = RING_EVENTS,
        max_consumers: int = MAX_CONSUMERS,
    ) -> None:
        self.ring_bytes, self.ring_age, self.ring_events = ring_bytes, ring_age, ring_events
        self.max_consumers = max_consumers
        self.epoch: str | None = None
        self.base = 0
        self._held: deque[_Held] = deque()
        self.held_bytes = 0
        self.consumers: set[Consumer] = set()
        self.resets: Counter[str] = Counter()
        """Resets sent, by reason (:class:`Reset`)."""
        self.cut_offs: Counter[str] = Counter()
        """Consumers cut off, by reason (:class:`CutOff`)."""

    @property
    def newest(self) -> int:
        return self.base + len(self._held)

    @property
    def memory(self) -> int:
        """Bytes to charge to the worker's memory budget: the ring (consumers hold none
        of their own, only their place in it)."""
        return self.held_bytes + FRAME_OVERHEAD * len(self.consumers)

    def after(self, seq: int) -> Iterator[_Held]:
        """The events held after ``seq`` (which must be at least ``base``), in order.
        A deque is walked from its nearer end: consumers are mostly at the newest."""
        held, start = self._held, seq - self.base
        if start < len(held) // 2:
            return islice(held, start, None)
        return (held[i] for i in range(start, len(held)))

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
        """The worker applied ``event`` in order: keep its frame; returns the consumers
        with something new to write (a consumer the ring no longer covers is cut off:
        it was too slow)."""
        if event.epoch == self.epoch and event.seq <= self.newest:
            return []  # a duplicate (never happens: the replica forwards each once)
        if event.epoch != self.epoch or event.seq != self.newest + 1:
            self.resynced(event.epoch, event.seq - 1)  # never happens in order
        held = _Held(event.seq, now, event_frame(event))
        self._held.append(held)
        self.held_bytes += len(held.frame) + FRAME_OVERHEAD
        while len(self._held) > 1 and (
            self.held_bytes > self.ring_bytes or len(self._held) > self.ring_events
        ):
            self._drop_oldest()  # the newest stays, however large: prompt ones get it
        self.trim(now)  # and cuts off the consumers left behind
        return list(self.consumers)

    def trim(self, now: float) -> list[Consumer]:
        """Drop the events older than ``ring_age`` at ``now``; returns the consumers cut
        off because the ring no longer holds what they are due."""
        oldest = now - self.ring_age
        while self._held and self._held[0].at < oldest:
            self._drop_oldest()
        return self._cut_behind()

    def _drop_oldest(self) -> None:
        gone = self._held.popleft()
        self.held_bytes -= len(gone.frame) + FRAME_OVERHEAD
        self.base = gone.seq

    def _cut_behind(self) -> list[Consumer]:
        cut = []
        for consumer in self.consumers:
            if (
                consumer.cut_off is None
                and consumer.epoch == self.epoch
                and consumer.position < self.base
            ):
                consumer.stop(CutOff.SLOW_CONSUMER)
                cut.append(consumer)
        return cut

    # ------------------------------------------------------------------ consumers

    def open(self, after: tuple[str, int] | None, now: float) -> Consumer | None:
        """A new consumer that last saw event ``after`` (``None``: none); ``None`` when
        ``max_consumers`` are connected already. Call only while the worker is live
        (after :meth:`resynced`)."""
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
            consumer.position = after[1]  # covered, or ahead: it waits for the worker
        return consumer

    def close(self, consumer: Consumer) -> None:
        """The consumer's connection ended: forget it."""
        self.consumers.discard(consumer)

    def stop_all(self, reason: str) -> list[Consumer]:
        """Cut every consumer off with ``reason`` (the worker is stopping)."""
        for consumer in self.consumers:
            consumer.stop(reason)
        return list(self.consumers)
