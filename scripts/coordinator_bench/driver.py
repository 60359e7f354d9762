"""Fake workers driving one coordinator process: the loads, and the replies counted."""

from __future__ import annotations

import functools
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from scripts.coordinator_bench.common import BODY, W1, W2, MeasureError, hello, key_of
from scripts.coordinator_bench.harness import CoordinatorProcess
from scripts.fake_worker import FakeWorker, encoded_size, messages_of, subscriber
from scripts.procfs import machine_cpu_seconds
from shared import backbone as bb

HWM = 1_000_000
"""Both high-water marks of every fake worker's socket: nothing is dropped on this side."""


@dataclass
class RunStats:
    """One driven run: what was sent and what it cost the coordinator."""

    events: int
    wall_s: float
    cpu_s: float
    main_cpu_s: float
    generator_cpu_s: float
    machine_cpu_s: float
    """CPU time of the whole machine (every core, every process) during the run."""
    replies: int

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        rate = self.events / self.wall_s
        return {
            **extra,
            "events": self.events,
            "wall_s": round(self.wall_s, 3),
            "events_per_s": rate,
            "cpu_s": self.cpu_s,
            "cpu_pct": 100 * self.cpu_s / self.wall_s,
            "main_thread_pct": 100 * self.main_cpu_s / self.wall_s,
            "generator_cpu_pct": 100 * self.generator_cpu_s / self.wall_s,
            "others_cpu_pct": 100
            * max(0.0, self.machine_cpu_s - self.cpu_s - self.generator_cpu_s)
            / self.wall_s,
            "cpu_us_per_event": 1e6 * self.cpu_s / self.events,
            "main_us_per_event": 1e6 * self.main_cpu_s / self.events,
        }


Source = Iterator[tuple[bytes, bool]]
"""Frames for the first worker's DEALER, each with whether a reply counts it done."""


@dataclass
class Driver:
    """Fake workers (a DEALER each, registered with Hello) and SUB sockets, in this
    process, against one :class:`CoordinatorProcess`."""

    coordinator: CoordinatorProcess
    ctx: zmq.Context[zmq.Socket[bytes]]
    workers: dict[str, FakeWorker] = field(default_factory=dict)
    subs: list[zmq.Socket[bytes]] = field(default_factory=list)
    online: dict[str, deque[tuple[str, bytes]]] = field(default_factory=dict)
    """Per worker, its acknowledged sessions: the key and the frame that closes it."""
    pending: dict[int, tuple[str, str, bytes]] = field(default_factory=dict)
    """Sessions awaiting their AuthAck, by connection id: worker, key, closing frame."""
    acks: int = 0
    delivers: int = 0
    snapshot_bytes: list[int] = field(default_factory=list)
    updates: list[int] = field(default_factory=list)
    update_bytes: list[int] = field(default_factory=list)
    next_id: int = 0
    welcomed: bool = False
    last_sent: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.poller = zmq.Poller()
        self._route = 0

    def add_worker(self, name: str) -> None:
        keys = self.coordinator.keys
        client = None if keys is None else keys.client
        worker = FakeWorker(self.ctx, name, self.coordinator.events, client=client, hwm=HWM)
        self.workers[name] = worker
        self.online[name] = deque()
        self.poller.register(worker.dealer, zmq.POLLIN)
        self.welcomed = False
        self.send(name, bb.encode(hello(name)))
        self.wait_for(lambda: self.welcomed, f"Welcome for {name}")

    def add_sub(self) -> None:
        """One more subscriber; returns once it receives updates (the slow-joiner rule:
        a SUB gets nothing until its subscription has reached the PUB)."""
        keys = self.coordinator.keys
        client = None if keys is None else keys.client
        sub = subscriber(self.ctx, self.coordinator.updates, client=client, hwm=HWM)
        self.subs.append(sub)
        self.updates.append(0)
        self.poller.register(sub, zmq.POLLIN)
        index = len(self.subs) - 1
        deadline = time.monotonic() + 15.0
        while not self.updates[index]:  # a join and a leave publish until it hears one
            if time.monotonic() > deadline:
                raise MeasureError("a SUB socket received no update within 15 s")
            self.run(self.churn(W1, 2), rate=None, duration=None, window=1)

    def set_subscribers(self, count: int) -> None:
        """Add or close SUB sockets until ``count`` are connected."""
        while len(self.subs) > count:
            sub = self.subs.pop()
            self.updates.pop()
            self.poller.unregister(sub)
            sub.close(0)
        while len(self.subs) < count:
            self.add_sub()

    def send(self, worker: str, frame: bytes) -> None:
        self.workers[worker].send_frame(frame)
        self.last_sent[worker] = time.monotonic()

    def new_session(self, worker: str) -> bytes:
        """The ``Authed`` frame of a new session on ``worker`` (its ``Closed`` frame is
        made now too, so the churn encodes one frame per event)."""
        self.next_id += 1
        conn, key = self.next_id, key_of(self.next_id)
        self.pending[conn] = (worker, key, bb.encode(bb.Closed(conn, key)))
        return bb.encode(bb.Authed(conn, key))

    def pump(self, timeout_ms: int) -> None:
        """Take every reply and update that arrives within ``timeout_ms``; keep quiet
        workers alive with a heartbeat (the coordinator forgets a silent one)."""
        for sock, _ in self.poller.poll(timeout_ms):
            for _ in range(100_000):
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                messages = messages_of(frame)
                for msg in messages:
                    if sock.socket_type == zmq.SUB:
                        self._on_published(sock, msg, encoded_size(frame, messages, msg))
                    else:
                        self._on_reply(msg, frame, messages)
        now = time.monotonic()
        for worker, at in self.last_sent.items():
            if now - at > 0.3:
                self.send(worker, bb.encode(bb.Heartbeat(worker)))

    def _on_published(self, sock: zmq.Socket[bytes], msg: bb.Message, size: int) -> None:
        if isinstance(msg, bb.Update):
            index = self.subs.index(sock) if len(self.subs) > 1 else 0
            self.updates[index] += 1
            if index == 0:
                self.update_bytes.append(size)

    def _on_reply(self, msg: bb.Message, frame: bytes, messages: list[bb.Message]) -> None:
        if isinstance(msg, bb.AuthAck):
            worker, key, closing = self.pending.pop(msg.conn)
            self.online[worker].append((key, closing))
            self.acks += 1
        elif isinstance(msg, bb.Deliver):
            self.delivers += 1
        elif isinstance(msg, bb.Snapshot):
            self.snapshot_bytes.append(encoded_size(frame, messages, msg))
        elif isinstance(msg, bb.Welcome):
            self.welcomed = True
        else:  # Reannounce, Kick, RouteDone: the run is not what it claims to be
            raise MeasureError(f"unexpected {msg!r}: the measurement is off")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.coordinator.check_alive()
                raise MeasureError(f"timed out after {timeout}s waiting for {what}")
            self.pump(10)

    # ------------------------------------------------------------------ loads

    def churn(self, worker: str, limit: int | None = None) -> Source:
        """Join/leave churn on ``worker`` at a constant lobby size: a leave of its
        oldest acknowledged session, then a join of a new one (done when acknowledged);
        only joins while it holds no acknowledged session."""
        online = self.online[worker]
        sent = 0
        while limit is None or sent < limit:
            if online:
                yield online.popleft()[1], False
                sent += 1
            yield self.new_session(worker), True
            sent += 1

    def joins(self, count: int) -> Source:
        """``count`` new sessions, alternately on the two workers' DEALERs."""
        for i in range(count):
            worker = (W1, W2)[i % 2] if W2 in self.workers else W1
            frame = self.new_session(worker)
            if worker == W1:
                yield frame, True
            else:  # the source feeds W1's DEALER; W2's frames go straight out
                self.send(W2, frame)
                yield b"", True

    def routes(self) -> Source:
        """Direct messages from W1 to the sessions on W2, round robin: a pool of frames
        made beforehand, sent again and again (the coordinator keeps no state per route,
        and the generator's CPU is better left to the coordinator)."""
        targets = [key for key, _ in self.online[W2]]
        sender, deadline = key_of(0), time.time() + 3600.0
        pool = [
            bb.encode(bb.Route(n, sender, targets[n % len(targets)], f"m{n}", BODY, deadline))
            for n in range(min(4096, len(targets)))
        ]
        for frame in itertools.cycle(pool):
            yield frame, True

    def run(
        self, source: Source, *, rate: float | None, duration: float | None, window: int
    ) -> RunStats:
        """Send ``source`` on W1's DEALER at ``rate`` events/s (``None``: as fast as
        the coordinator answers, at most ``window`` awaiting a reply) for ``duration``
        seconds (``None``: until it ends), then wait for every reply. The coordinator's
        CPU is read just before the first send and after the last reply."""
        dealer = self.workers[W1].dealer
        done_before = self.acks + self.delivers
        expected = events = 0
        exhausted = False
        cpu0, main0 = self.coordinator.cpu()
        gen0, machine0 = time.process_time(), machine_cpu_seconds()
        start = time.monotonic()
        while not exhausted:
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            due = events + 256 if rate is None else int((now - start) * rate)
            done = self.acks + self.delivers - done_before
            while events < due and expected - done < window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                frame, counts = item
                if frame:
                    dealer.send(frame)
                events += 1
                expected += counts
            self.last_sent[W1] = time.monotonic()
            self.pump(0 if rate is None and expected - done < window else 1)
        self.wait_for(
            lambda: self.acks + self.delivers - done_before >= expected,
            f"replies to {expected} events",
        )
        wall = time.monotonic() - start
        cpu1, main1 = self.coordinator.cpu()
        return RunStats(
            events=events,
            wall_s=wall,
            cpu_s=cpu1 - cpu0,
            main_cpu_s=main1 - main0,
            generator_cpu_s=time.process_time() - gen0,
            machine_cpu_s=machine_cpu_seconds() - machine0,
            replies=expected,
        )

    def idle(self, seconds: float) -> dict[str, Any]:
        """The coordinator's CPU while only heartbeats and beats flow."""
        cpu0, _ = self.coordinator.cpu()
        start = time.monotonic()
        self.wait_for(lambda: time.monotonic() - start >= seconds, "idle period", seconds + 5)
        cpu1, _ = self.coordinator.cpu()
        return {"seconds": seconds, "cpu_pct": 100 * (cpu1 - cpu0) / (time.monotonic() - start)}

    def snapshots(self, count: int, worker: str = W2) -> dict[str, Any]:
        """``count`` SnapshotRequests from ``worker``, at most 4 awaiting their
        Snapshot (so they never pile up in memory): CPU per snapshot and its size."""
        have = len(self.snapshot_bytes)
        request = bb.encode(bb.SnapshotRequest())
        cpu0, main0 = self.coordinator.cpu()
        for sent in range(1, count + 1):
            self.send(worker, request)
            self.wait_for(functools.partial(self._snapshots, have + sent - 4), "snapshots")
        self.wait_for(functools.partial(self._snapshots, have + count), "snapshots")
        cpu1, main1 = self.coordinator.cpu()
        return {
            "count": count,
            "cpu_ms_per_snapshot": 1000 * (cpu1 - cpu0) / count,
            "main_ms_per_snapshot": 1000 * (main1 - main0) / count,
            "bytes": self.snapshot_bytes[-1],
        }

    def _snapshots(self, at_least: int) -> bool:
        return len(self.snapshot_bytes) >= at_least

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        for sock in self.subs:
            sock.close(0)
