#!/usr/bin/env python3
"""Measure what one coordinator costs per event, for a paper estimate of its capacity.

    python scripts/coordinator_costs.py [--sizes 1000,10000,50000] [--json FILE]
                                         [--pure-only] [--duration 3] [--rate 10000]

Two parts, both printed as Markdown tables (``bench.py --only coordinator`` puts the
same tables in BENCHMARKS.md):

1. **Pure core.** :class:`~coordinator.core.CoordinatorCore` in this process, no
   sockets: the time of each kind of event (decode the frame, ``handle``, its share of
   the flush that publishes it, encode what goes out; and the core alone, without the
   codec), the median of many rounds after a warm-up, at each lobby size, so the cost
   per event can be compared between a small and a big lobby. Also the flush as a
   function of keys per update and the snapshot as a function of lobby size.
2. **The real process.** ``python -m coordinator`` on private endpoints, driven by
   fake workers (a DEALER each, registered with ``Hello``, and SUB sockets) from this
   process. The coordinator's own CPU time is read from ``/proc/PID/stat`` (utime +
   stime, every thread; and its main thread's from ``/proc/PID/task/PID/stat``) before
   and after each run, so the figures are the server's cost, not the generator's:
   join/leave churn and direct messages at a fixed rate at each lobby size, RSS at each
   size, snapshots, the rate at which it saturates, and the PUB fan-out cost per
   subscriber (1, 2, 4 SUB sockets, over ipc:// and over tcp:// with CURVE).

Nothing here waits by sleeping: every wait polls the sockets until a condition holds or
a deadline passes. Figures are measurements for one machine, never assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import zmq
import zmq.auth

from coordinator.core import CoordinatorCore, Output
from coordinator.settings import CoordinatorSettings, Timing
from shared import backbone as bb
from shared import curve
from shared.endpoints import BackboneOptions
from shared.notify import Listener

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
W1, W2 = "w1", "w2"
BODY = "x" * 100
"""The body of every measured direct message (100 characters)."""
MAX_MESSAGE_BYTES = BackboneOptions().max_message_bytes
IDLE_SECONDS = 5.0


def key_of(i: int) -> str:
    """A distinct 64-hex-character public key for each ``i``."""
    return f"{i:064x}"


def hello(worker: str) -> bb.Hello:
    return bb.Hello(worker, "", f"ipc:///nonexistent/results-{worker}", "", [])


# =========================================================================== pure core

PURE_SETTINGS = CoordinatorSettings(
    # The window never fires by itself: the measurement calls publish() where it wants
    # a flush (after each event, or after each batch). Workers never expire.
    timing=Timing(
        batch_window=3600.0, max_batch_window=3600.0, heartbeat_interval=1.0, worker_timeout=1e9
    )
)
NOW, WALL, FAR = 1.0, 1.0, 1e18

EVENT_KINDS: dict[str, str] = {
    "join": "join (Authed), published alone: Update + AuthAck",
    "join_batch": "join, {batch} per update",
    "leave": "leave (Closed), published alone: Update",
    "leave_batch": "leave, {batch} per update",
    "route": "direct message (Route -> Deliver)",
    "route_offline": "Route to an offline key -> RouteDone",
    "heartbeat": "Heartbeat from a worker",
    "beat": "Beat to all (tick + encode)",
}


class PureBench:
    """A core with ``users`` online (split over two workers, all published)."""

    def __init__(self, users: int) -> None:
        self.core = CoordinatorCore(PURE_SETTINGS, epoch=bb.new_epoch(), now=0.0)
        for worker in (W1, W2):
            self.core.handle(worker, hello(worker), 0.0, 0.0)
        self.on_w2: list[str] = []
        for i in range(users):
            worker = (W1, W2)[i % 2]
            self.core.handle(worker, bb.Authed(i, key_of(i)), 0.0, 0.0)
            if worker == W2:
                self.on_w2.append(key_of(i))
        self.core.publish(0.0, 0.0, [])
        self.users = users
        self.next_id = users
        self.route_id = 0
        self.clock = 1.0

    def fresh(self, m: int) -> range:
        ids = range(self.next_id, self.next_id + m)
        self.next_id += m
        return ids

    def timed(
        self, worker: str, msgs: Sequence[bb.Message], batch: int, codec: bool, flush: bool
    ) -> int:
        """Nanoseconds to apply ``msgs`` from ``worker`` with a flush after every
        ``batch`` (when ``flush``); with ``codec``, decoding each frame and encoding
        every output as the shell does."""
        handle, publish = self.core.handle, self.core.publish
        decode, encode = bb.decode, bb.encode
        if codec:
            frames = [encode(m) for m in msgs]
            chunks = [frames[i : i + batch] for i in range(0, len(frames), batch)]
            start = time.perf_counter_ns()
            for chunk in chunks:
                for frame in chunk:
                    for o in handle(worker, decode(frame), NOW, WALL):
                        encode(o.message)
                if flush:
                    out: list[Output] = []
                    publish(NOW, WALL, out)
                    for o in out:
                        encode(o.message)
            return time.perf_counter_ns() - start
        plain = [list(msgs[i : i + batch]) for i in range(0, len(msgs), batch)]
        start = time.perf_counter_ns()
        for part in plain:
            for msg in part:
                handle(worker, msg, NOW, WALL)
            if flush:
                publish(NOW, WALL, [])
        return time.perf_counter_ns() - start

    def round(self, kind: str, m: int, batch: int, codec: bool) -> int:
        """Nanoseconds for ``m`` events of ``kind``; the lobby ends as it began."""
        if kind in ("join", "join_batch", "leave", "leave_batch"):
            size = 1 if kind in ("join", "leave") else batch
            ids = self.fresh(m)
            joins = [bb.Authed(i, key_of(i)) for i in ids]
            leaves = [bb.Closed(i, key_of(i)) for i in ids]
            joined = self.timed(W1, joins, size, codec, flush=True)
            left = self.timed(W1, leaves, size, codec, flush=True)
            return joined if kind.startswith("join") else left
        if kind in ("route", "route_offline"):
            msgs: list[bb.Message] = []
            for _ in range(m):
                self.route_id += 1
                n = self.route_id
                to = self.on_w2[n % len(self.on_w2)] if kind == "route" else key_of(2**255 + n)
                msgs.append(bb.Route(n, key_of(0), to, f"m{n}", BODY, FAR))
            return self.timed(W1, msgs, m, codec, flush=False)
        if kind == "heartbeat":
            return self.timed(W1, [bb.Heartbeat(W1)] * m, m, codec, flush=False)
        if kind == "beat":
            tick, encode = self.core.tick, bb.encode
            ticks = [self.clock + i for i in range(m)]
            self.clock += m
            start = time.perf_counter_ns()
            for now in ticks:
                for o in tick(now, WALL):
                    if codec:
                        encode(o.message)
            return time.perf_counter_ns() - start
        raise ValueError(kind)

    def flush_costs(self, keys: int, reps: int) -> dict[str, Any]:
        """One update of ``keys`` joins (Update + ``keys`` AuthAcks), then one of as
        many leaves: median µs per flush, encoding included; the Update's encoding alone."""
        join_ns: list[int] = []
        leave_ns: list[int] = []
        encode_ns: list[int] = []
        size = 0
        for _ in range(reps):
            ids = self.fresh(keys)
            for i in ids:
                self.core.handle(W1, bb.Authed(i, key_of(i)), NOW, WALL)
            join_ns.append(self._timed_publish())
            joined = [key_of(i) for i in ids]
            update = bb.Update(self.core.epoch, self.core.lobby.seq, joined, [], WALL)
            start = time.perf_counter_ns()
            size = len(bb.encode(update))
            encode_ns.append(time.perf_counter_ns() - start)
            for i in ids:
                self.core.handle(W1, bb.Closed(i, key_of(i)), NOW, WALL)
            leave_ns.append(self._timed_publish())
        join_us = statistics.median(join_ns) / 1000
        leave_us = statistics.median(leave_ns) / 1000
        return {
            "keys": keys,
            "join_flush_us": join_us,
            "join_flush_us_per_key": join_us / keys,
            "leave_flush_us": leave_us,
            "leave_flush_us_per_key": leave_us / keys,
            "update_encode_us": statistics.median(encode_ns) / 1000,
            "update_bytes": size,
        }

    def _timed_publish(self) -> int:
        start = time.perf_counter_ns()
        out: list[Output] = []
        self.core.publish(NOW, WALL, out)
        for o in out:
            bb.encode(o.message)
        return time.perf_counter_ns() - start

    def snapshot_cost(self, reps: int) -> dict[str, Any]:
        """A SnapshotRequest handled and its Snapshot encoded: median µs, and bytes.
        ``us``: the first request at a ``seq`` (the snapshot is made: the core's
        per-seq cache is emptied before each, as a publish would); ``cached_us``:
        another worker asking at the same ``seq`` (the core hands the same one)."""
        made: list[int] = []
        cached: list[int] = []
        size = 0
        for _ in range(reps):
            for times in (made, cached):
                if times is made:
                    self.core._snapshot = None  # what publishing the next seq does
                start = time.perf_counter_ns()
                for o in self.core.handle(W2, bb.SnapshotRequest(), NOW, WALL):
                    size = len(bb.encode(o.message))
                times.append(time.perf_counter_ns() - start)
        return {
            "users": self.users,
            "us": statistics.median(made) / 1000,
            "cached_us": statistics.median(cached) / 1000,
            "bytes": size,
            "bytes_per_user": size / max(1, self.users),
        }


def measure_pure(
    sizes: Sequence[int],
    *,
    rounds: int = 15,
    round_events: int = 1000,
    batch: int = 100,
    flush_keys: Sequence[int] = (1, 10, 100, 1000, 10000),
) -> dict[str, Any]:
    """Every pure-core figure (see the module docstring), as plain data."""
    events: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in EVENT_KINDS}
    snapshots: list[dict[str, Any]] = []
    bench: PureBench | None = None
    for users in sizes:
        bench = PureBench(users)
        for kind in EVENT_KINDS:
            bench.round(kind, round_events, batch, codec=True)  # warm-up
            with_codec: list[int] = []
            core_only: list[int] = []
            for _ in range(rounds):
                with_codec.append(bench.round(kind, round_events, batch, codec=True))
                core_only.append(bench.round(kind, round_events, batch, codec=False))
            events[kind][str(users)] = {
                "us": statistics.median(with_codec) / round_events / 1000,
                "core_us": statistics.median(core_only) / round_events / 1000,
            }
        snapshots.append(bench.snapshot_cost(max(3, min(50, 200_000 // max(users, 1)))))
    assert bench is not None, "no sizes"
    flushes = [bench.flush_costs(k, max(3, min(200, 20_000 // k))) for k in flush_keys]
    small, large = str(min(sizes)), str(max(sizes))
    scaling = {
        kind: by_size[large]["us"] / by_size[small]["us"] for kind, by_size in events.items()
    }
    return {
        "sizes": list(sizes),
        "rounds": rounds,
        "round_events": round_events,
        "batch": batch,
        "events": events,
        "scaling": scaling,
        "flush": flushes,
        "flush_at_users": max(sizes),
        "snapshot": snapshots,
    }


# =========================================================================== process


class MeasureError(RuntimeError):
    """The measurement could not be made (the coordinator died, lost track, timed out)."""


def proc_cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of process ``pid`` (every thread), or of its thread ``tid``."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    stat = Path(path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (every core; /proc/stat, not idle
    nor iowait): what else runs beside the coordinator and this generator shows."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@dataclass
class Keys:
    """CURVE key files for a tcp:// backbone: the coordinator's and one worker's."""

    coordinator_secret: str
    clients: str
    worker: curve.KeyPair
    server_public: bytes

    @classmethod
    def make(cls, directory: Path) -> Keys:
        clients = directory / "clients"
        clients.mkdir(mode=0o700)
        _, secret = zmq.auth.create_certificates(str(directory), "coordinator")
        _, worker_secret = zmq.auth.create_certificates(str(clients), "worker")
        return cls(
            coordinator_secret=str(secret),
            clients=str(clients),
            worker=curve.load_keypair(str(worker_secret)),
            server_public=curve.load_public(str(secret)),
        )


class CoordinatorProcess:
    """``python -m coordinator`` on private endpoints, ready when it says so (sd_notify)."""

    def __init__(self, workdir: Path, extra: Sequence[str], tcp_keys: Keys | None) -> None:
        if tcp_keys is None:
            self.events, self.updates = f"ipc://{workdir}/events", f"ipc://{workdir}/updates"
            security: list[str] = []
        else:
            self.events = f"tcp://127.0.0.1:{free_port()}"
            self.updates = f"tcp://127.0.0.1:{free_port()}"
            security = [
                "--curve-secret-key",
                tcp_keys.coordinator_secret,
                "--curve-clients",
                tcp_keys.clients,
            ]
        self.keys = tcp_keys
        self.log = workdir / "coordinator.log"
        self.notify = Listener()
        env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=self.notify.address)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "coordinator",
            "--events-endpoint",
            self.events,
            "--updates-endpoint",
            self.updates,
            "--port",
            str(free_port()),
            *security,
            *extra,
        ]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.notify.count("READY"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise MeasureError(f"coordinator not ready after {timeout}s:\n{self.tail()}")
            self.notify.receive(0.05)  # returns as soon as a notification arrives

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise MeasureError(f"the coordinator exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-30:])
        return ""

    def cpu(self) -> tuple[float, float]:
        """(every thread, main thread) CPU seconds so far."""
        return proc_cpu_s(self.pid), proc_cpu_s(self.pid, self.pid)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self.notify.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def frames_of(frame: bytes) -> list[bytes]:
    """The messages of a backbone frame, each as its own frame: the coordinator sends a
    worker everything of one turn of its loop as one batch (``[[v, tag, ...], ...]``)."""
    if len(frame) > 1 and frame[0] & 0xF0 == 0x90 and frame[1] == bb.SCHEMA_VERSION:
        return [frame]  # one message (a fixarray, then the version)
    raw = msgpack.unpackb(frame, raw=False)
    if isinstance(raw, list) and raw and isinstance(raw[0], list):
        return [msgpack.packb(item, use_bin_type=True) for item in raw]
    return [frame]


def tag_of(frame: bytes) -> str:
    """The tag of a backbone frame, read from its first bytes (``[v, tag, ...]`` in
    msgpack: a fixarray, the version, a fixstr), so counting replies costs the
    generator little; anything else is decoded in full."""
    if len(frame) > 3 and frame[0] & 0xF0 == 0x90 and frame[2] & 0xE0 == 0xA0:
        return frame[3 : 3 + (frame[2] & 0x1F)].decode()
    return bb.decode(frame).TAG


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
    """Fake workers (one DEALER each, registered with Hello) and SUB sockets, in this
    process, against one :class:`CoordinatorProcess`."""

    coordinator: CoordinatorProcess
    ctx: zmq.Context[zmq.Socket[bytes]]
    dealers: dict[str, zmq.Socket[bytes]] = field(default_factory=dict)
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

    def _secure(self, sock: zmq.Socket[bytes]) -> None:
        keys = self.coordinator.keys
        if keys is not None:
            curve.make_client(sock, keys.worker, keys.server_public)

    def add_worker(self, name: str) -> None:
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 1_000_000)
        dealer.setsockopt(zmq.RCVHWM, 1_000_000)
        dealer.setsockopt(zmq.ROUTING_ID, name.encode())
        self._secure(dealer)
        dealer.connect(self.coordinator.events)
        self.dealers[name] = dealer
        self.online[name] = deque()
        self.poller.register(dealer, zmq.POLLIN)
        self.welcomed = False
        self.send(name, bb.encode(hello(name)))
        self.wait_for(lambda: self.welcomed, f"Welcome for {name}")

    def add_sub(self) -> None:
        """One more subscriber; returns once it receives updates (the slow-joiner rule:
        a SUB gets nothing until its subscription has reached the PUB)."""
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._secure(sub)
        sub.connect(self.coordinator.updates)
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
        self.dealers[worker].send(frame)
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
                if sock.socket_type == zmq.SUB:
                    self._on_published(sock, frame)
                else:
                    for reply in frames_of(frame):
                        self._on_reply(reply)
        now = time.monotonic()
        for worker, at in self.last_sent.items():
            if now - at > 0.3:
                self.send(worker, bb.encode(bb.Heartbeat(worker)))

    def _on_published(self, sock: zmq.Socket[bytes], frame: bytes) -> None:
        if tag_of(frame) == bb.Update.TAG:
            index = self.subs.index(sock) if len(self.subs) > 1 else 0
            self.updates[index] += 1
            if index == 0:
                self.update_bytes.append(len(frame))

    def _on_reply(self, frame: bytes) -> None:
        tag = tag_of(frame)
        if tag == bb.AuthAck.TAG:
            worker, key, closing = self.pending.pop(msgpack.unpackb(frame)[2])
            self.online[worker].append((key, closing))
            self.acks += 1
        elif tag == bb.Deliver.TAG:
            self.delivers += 1
        elif tag == bb.Snapshot.TAG:
            self.snapshot_bytes.append(len(frame))
        elif tag == bb.Welcome.TAG:
            self.welcomed = True
        else:  # Reannounce, Kick, RouteDone: the run is not what it claims to be
            raise MeasureError(f"unexpected {bb.decode(frame)!r}: the measurement is off")

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
            worker = (W1, W2)[i % 2] if W2 in self.dealers else W1
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
        dealer = self.dealers[W1]
        done_before = self.acks + self.delivers
        expected = events = 0
        exhausted = False
        cpu0, main0 = self.coordinator.cpu()
        gen0, machine0 = time.process_time(), machine_cpu_s()
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
            machine_cpu_s=machine_cpu_s() - machine0,
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
        for sock in [*self.dealers.values(), *self.subs]:
            sock.close(0)


def measure_process(
    sizes: Sequence[int],
    *,
    rate: float,
    duration: float,
    fanout_rate: float,
    fanout_subscribers: Sequence[int] = (1, 2, 4),
    fanout_rounds: int = 3,
    fanout_duration: float = 2.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every figure of the real coordinator process (see the module docstring)."""
    result: dict[str, Any] = {
        "rate": rate,
        "duration_s": duration,
        "fanout_rate": fanout_rate,
        "fanout_rounds": fanout_rounds,
        "fanout_duration_s": fanout_duration,
    }
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="coordinator-costs-") as tmp:
            workdir = Path(tmp)
            result.update(_memory_run(ctx, workdir / "memory", sizes, log))
            result.update(_main_runs(ctx, workdir / "main", sizes, rate, duration, log))
            fanout: list[dict[str, Any]] = []
            transfer: list[dict[str, Any]] = []
            for transport in ("ipc", "tcp+curve"):
                rows, sent = _fanout_runs(
                    ctx,
                    workdir / transport,
                    transport,
                    fanout_subscribers,
                    fanout_rate,
                    fanout_duration,
                    max(sizes),
                    fanout_rounds,
                    log,
                )
                fanout += rows
                transfer.append(sent)
            result["fanout"] = fanout
            result["transfer"] = transfer
            result["fanout_us_per_subscriber"] = {
                transport: _slope(
                    [
                        (r["subscribers"], r["cpu_us_per_update"])
                        for r in fanout
                        if r["transport"] == transport
                    ]
                )
                for transport in ("ipc", "tcp+curve")
            }
    finally:
        ctx.destroy(linger=0)
    return result


def snapshot_count(users: int) -> int:
    """Enough snapshots of a lobby of ``users`` for a CPU figure well above /proc's
    10 ms clock tick."""
    return max(20, 2_000_000 // max(1, users))


def _started(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    extra: Sequence[str] = (),
    keys: Keys | None = None,
    workers: Sequence[str] = (W1, W2),
) -> Driver:
    """A fresh coordinator with ``workers`` registered and one subscriber each."""
    workdir.mkdir(mode=0o700)
    driver = Driver(CoordinatorProcess(workdir, extra, keys), ctx)
    try:
        for worker in workers:
            driver.add_worker(worker)
        for _ in workers:
            driver.add_sub()
    except BaseException:
        driver.close()
        raise
    return driver


def _memory_run(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    sizes: Sequence[int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """RSS of a fresh coordinator (default settings, two workers) as sessions join: a
    process of its own, so nothing else it did (snapshots, churn) weighs on the figure."""
    log("  coordinator process: memory")
    driver = _started(ctx, workdir)
    coordinator = driver.coordinator
    try:
        rss = [{"sessions": 0, "rss_mib": coordinator.rss() / 2**20}]
        users = 0
        for size in sizes:
            driver.run(driver.joins(size - users), rate=None, duration=None, window=10_000)
            users = size
            rss.append({"sessions": size, "rss_mib": coordinator.rss() / 2**20})
        coordinator.check_alive()
    finally:
        driver.close()
        coordinator.stop()
    base, top = rss[0], rss[-1]
    return {
        "rss": rss,
        "kib_per_session": 1024 * (top["rss_mib"] - base["rss_mib"]) / top["sessions"],
    }


def _main_runs(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    sizes: Sequence[int],
    rate: float,
    duration: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The coordinator with its default settings, two workers, two subscribers."""
    driver = _started(ctx, workdir)
    coordinator = driver.coordinator
    try:
        idle = driver.idle(IDLE_SECONDS)
        fixed: list[dict[str, Any]] = []
        snapshots: list[dict[str, Any]] = []
        users = 0
        for size in sizes:
            log(f"  coordinator process: {size:,} users")
            driver.run(driver.joins(size - users), rate=None, duration=None, window=10_000)
            users = size
            stats = driver.run(driver.churn(W1), rate=rate, duration=duration, window=10_000)
            fixed.append(stats.as_dict(users=size, load="join/leave", offered=rate))
            stats = driver.run(driver.routes(), rate=rate, duration=duration, window=10_000)
            fixed.append(stats.as_dict(users=size, load="direct messages", offered=rate))
            snap = driver.snapshots(snapshot_count(size))
            snapshots.append({"users": size, **snap})
        log(f"  coordinator process: saturation at {users:,} users")
        window = max(1, min(10_000, users // 4))
        saturation = [
            driver.run(driver.churn(W1), rate=None, duration=duration, window=window).as_dict(
                users=users, load="join/leave", window=window
            ),
            driver.run(driver.routes(), rate=None, duration=duration, window=10_000).as_dict(
                users=users, load="direct messages", window=10_000
            ),
        ]
        coordinator.check_alive()
    finally:
        driver.close()
        coordinator.stop()
    return {
        "idle_cpu_pct": idle["cpu_pct"],
        "fixed_rate": fixed,
        "snapshot": snapshots,
        "saturation": saturation,
    }


def _fanout_runs(
    ctx: zmq.Context[zmq.Socket[bytes]],
    workdir: Path,
    transport: str,
    subscribers: Sequence[int],
    rate: float,
    duration: float,
    users: int,
    rounds: int,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A coordinator that publishes every event as its own update (batch window 0), at
    ``rate`` events/s, with 1, 2, 4 ... subscribers: the cost of each copy of an update.
    Then the cost of bytes to one worker over ``transport``: snapshots of ``users``."""
    keys = None
    if transport != "ipc":
        (workdir.parent / "keys").mkdir(mode=0o700)
        keys = Keys.make(workdir.parent / "keys")
    driver = _started(ctx, workdir, ["--batch-window", "0"], keys, workers=[W1])
    coordinator = driver.coordinator
    runs: dict[int, list[dict[str, float]]] = {count: [] for count in subscribers}
    try:
        driver.run(driver.joins(1000), rate=None, duration=None, window=1000)
        log(f"  PUB fan-out over {transport}: {rounds} x {list(subscribers)} subscribers")
        for _ in range(rounds):  # interleaved, so a noisy moment does not hit one count
            for count in subscribers:
                driver.set_subscribers(count)
                before = driver.updates[0]
                sizes_before = len(driver.update_bytes)
                stats = driver.run(driver.churn(W1), rate=rate, duration=duration, window=10_000)
                updates = max(1, driver.updates[0] - before)
                frames = driver.update_bytes[sizes_before:]
                runs[count].append(
                    {
                        "updates_per_s": updates / stats.wall_s,
                        "update_bytes_mean": statistics.mean(frames) if frames else 0.0,
                        "cpu_pct": 100 * stats.cpu_s / stats.wall_s,
                        "cpu_us_per_update": 1e6 * stats.cpu_s / updates,
                        "main_us_per_update": 1e6 * stats.main_cpu_s / updates,
                        "others_cpu_pct": stats.as_dict()["others_cpu_pct"],
                    }
                )
        log(f"  snapshots of {users:,} users over {transport}")
        driver.set_subscribers(0)  # the lobby fills without 4 copies of every join
        driver.run(driver.joins(max(0, users - 1000)), rate=None, duration=None, window=10_000)
        snap = driver.snapshots(snapshot_count(users), worker=W1)
        coordinator.check_alive()
    finally:
        driver.close()
        coordinator.stop()
    rows = [
        {
            "transport": transport,
            "subscribers": count,
            "runs": len(samples),
            **{name: statistics.median(r[name] for r in samples) for name in samples[0]},
            "cpu_us_per_update_all": [r["cpu_us_per_update"] for r in samples],
        }
        for count, samples in runs.items()
    ]
    per_kib = 1000 * snap["cpu_ms_per_snapshot"] / (snap["bytes"] / 1024)
    return rows, {"transport": transport, "users": users, **snap, "us_per_kib": per_kib}


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0


# =========================================================================== estimate


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """The capacity figures the paper estimate in docs/operating.md uses, from the measurements."""
    pure = result["pure"]
    largest = str(max(pure["sizes"]))
    snap = pure["snapshot"][-1]
    flush = {f["keys"]: f for f in pure["flush"]}
    big_flush = flush[max(flush)]
    derived: dict[str, Any] = {
        "pure_join_leave_us": (
            pure["events"]["join_batch"][largest]["us"]
            + pure["events"]["leave_batch"][largest]["us"]
        )
        / 2,
        "pure_route_us": pure["events"]["route"][largest]["us"],
        "snapshot_bytes_per_user": snap["bytes_per_user"],
        "update_bytes_per_key": big_flush["update_bytes"] / big_flush["keys"],
        "users_at_max_message_bytes": int(MAX_MESSAGE_BYTES / snap["bytes_per_user"]),
        "max_message_bytes": MAX_MESSAGE_BYTES,
    }
    proc = result.get("process")
    if proc:
        for row in proc["saturation"]:
            name = "join_leave" if row["load"] == "join/leave" else "route"
            derived[f"{name}_saturated_per_s"] = row["events_per_s"]
            derived[f"{name}_saturated_main_pct"] = row["main_thread_pct"]
            derived[f"{name}_main_us"] = row["main_us_per_event"]
            derived[f"{name}_saturated_us"] = row["cpu_us_per_event"]
            derived[f"{name}_one_core_per_s"] = 1e6 / row["main_us_per_event"]
        top = max(r["users"] for r in proc["fixed_rate"])
        for row in proc["fixed_rate"]:
            if row["users"] == top:
                name = "join_leave" if row["load"] == "join/leave" else "route"
                derived[f"{name}_process_us"] = row["cpu_us_per_event"]
        derived["kib_per_session"] = proc["kib_per_session"]
        derived["sessions_per_gib"] = int(2**20 / proc["kib_per_session"])
        last = proc["snapshot"][-1]
        derived["snapshot_users"] = last["users"]
        derived["snapshot_process_ms"] = last["cpu_ms_per_snapshot"]
        derived["snapshot_main_ms"] = last["main_ms_per_snapshot"]
        derived["fanout_us_per_subscriber"] = proc["fanout_us_per_subscriber"]
        derived["send_us_per_kib"] = {t["transport"]: t["us_per_kib"] for t in proc["transfer"]}
    return derived


# =========================================================================== report


def _n(value: float) -> str:
    """A figure for a table: 3 significant digits, thousands separated."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(result: dict[str, Any]) -> list[str]:
    """The tables, in Markdown (for stdout and for BENCHMARKS.md)."""
    pure = result["pure"]
    sizes = [str(s) for s in pure["sizes"]]
    m = result["machine"]
    lines = [
        f"Measured by `{result['command']}` in {result['wall_s']:.0f} s, at commit "
        f"{m['commit']} on {m['date']}: {m['cpu']}, Python {m['python']}, libzmq {m['zmq']}. "
        "Every figure is a measurement on that machine, not a target.",
        "",
        "### Pure core: µs per event, in process",
        "",
        "`CoordinatorCore` with no sockets: decode the frame, `handle`, the event's share of",
        "the flush that publishes it, encode every output (in brackets: the core alone,",
        f"without decode/encode). Median of {pure['rounds']} rounds of "
        f"{pure['round_events']:,} events after a warm-up.",
        "",
        "| event | "
        + " | ".join(f"{int(s):,} users" for s in sizes)
        + f" | {_k(sizes[-1])} / {_k(sizes[0])} |",
        "|---" * (len(sizes) + 2) + "|",
    ]
    for kind, label in EVENT_KINDS.items():
        by_size = pure["events"][kind]
        cells = [f"{_n(by_size[s]['us'])} ({_n(by_size[s]['core_us'])})" for s in sizes]
        ratio = pure["scaling"][kind]
        lines.append(
            f"| {label.format(batch=pure['batch'])} | " + " | ".join(cells) + f" | {ratio:.2f}x |"
        )
    lines += [
        "",
        f"### Pure core: one flush of K keys (at {pure['flush_at_users']:,} users)",
        "",
        "A join flush publishes an `Update` of K joined keys and K `AuthAck`s; a leave flush",
        "an `Update` of K left keys. Encoding included.",
        "",
        "| K keys | join flush µs | per key | leave flush µs | per key | Update encode µs "
        "| Update bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in pure["flush"]:
        lines.append(
            f"| {f['keys']:,} | {_n(f['join_flush_us'])} | {_n(f['join_flush_us_per_key'])} | "
            f"{_n(f['leave_flush_us'])} | {_n(f['leave_flush_us_per_key'])} | "
            f"{_n(f['update_encode_us'])} | {f['update_bytes']:,} |"
        )
    lines += [
        "",
        "### Pure core: snapshot (SnapshotRequest -> Snapshot, encoded)",
        "",
        "Made: the first request at a `seq`; again: another worker asking at the same",
        "`seq`, handed the snapshot already made (the encoding is measured both times; the",
        "process encodes it once per `seq` too).",
        "",
        "| users | made µs | again µs | bytes | bytes per user |",
        "|---|---|---|---|---|",
    ]
    for s in pure["snapshot"]:
        again = _n(s["cached_us"]) if "cached_us" in s else "-"
        lines.append(
            f"| {s['users']:,} | {_n(s['us'])} | {again} | {s['bytes']:,} "
            f"| {s['bytes_per_user']:.1f} |"
        )
    proc = result.get("process")
    if proc:
        lines += _process_tables(proc)
    lines += [
        "",
        "### Derived (the inputs of the paper estimate in docs/operating.md)",
        "",
        "| figure | key | value |",
        "|---|---|---|",
    ]
    for name, value in result["derived"].items():
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {_n(v)}" for k, v in value.items())
        else:
            shown = _n(value)
        label = DERIVED_LABELS.get(name, name).format(
            users=f"{max(pure['sizes']):,}",
            rate=f"{result.get('process', {}).get('rate', 0):,.0f}",
            keys=f"{max(f['keys'] for f in pure['flush']):,}",
        )
        lines.append(f"| {label} | `{name}` | {shown} |")
    return [*lines, ""]


DERIVED_LABELS = {
    "pure_join_leave_us": "pure core µs per join or leave, 100 per update, {users} users",
    "pure_route_us": "pure core µs per direct message, {users} users",
    "snapshot_bytes_per_user": "snapshot bytes per online user",
    "update_bytes_per_key": "update bytes per changed key ({keys}-key update)",
    "users_at_max_message_bytes": "users whose snapshot fills --max-message-bytes",
    "max_message_bytes": "--max-message-bytes (default)",
    "join_leave_saturated_per_s": "joins + leaves per s, unthrottled (here a lower bound)",
    "join_leave_saturated_main_pct": "  main thread % in that run",
    "join_leave_main_us": "  main thread µs per join or leave, unthrottled",
    "join_leave_saturated_us": "  µs per join or leave (every thread), unthrottled",
    "join_leave_one_core_per_s": "joins + leaves per s one core takes (10^6 / main thread µs)",
    "route_saturated_per_s": "direct messages per s, unthrottled (here a lower bound)",
    "route_saturated_main_pct": "  main thread % in that run",
    "route_main_us": "  main thread µs per direct message, unthrottled",
    "route_saturated_us": "  µs per direct message (every thread), unthrottled",
    "route_one_core_per_s": "direct messages per s one core takes (10^6 / main thread µs)",
    "join_leave_process_us": "µs per join or leave (every thread) at {rate}/s, {users} users",
    "route_process_us": "µs per direct message (every thread) at {rate}/s, {users} users",
    "kib_per_session": "coordinator RSS per session, KiB",
    "sessions_per_gib": "sessions per GiB of coordinator RSS",
    "snapshot_users": "snapshot measured at users",
    "snapshot_process_ms": "  CPU ms per snapshot (every thread)",
    "snapshot_main_ms": "  main thread ms per snapshot (no event is applied meanwhile)",
    "fanout_us_per_subscriber": "µs per update per more subscriber (batch window 0)",
    "send_us_per_kib": "µs per KiB sent to a worker (snapshots)",
}


def _k(size: str) -> str:
    n = int(size)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _process_tables(proc: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "### The coordinator process: CPU per event",
        "",
        "`python -m coordinator` with its default settings (batching 5-50 ms) over ipc://, two",
        "fake workers each with a DEALER and a SUB, driven from the benchmark process. CPU is",
        "the coordinator's own, from `/proc/PID/stat` (utime + stime of every thread; main",
        "thread: its Python loop, from `/proc/PID/task/PID/stat`), read before the first",
        "event and after the last reply; `others %` is what the rest of the machine used",
        "meanwhile (`/proc/stat`), in % of one core. Join/leave: a leave, then a join, on one",
        "worker, the lobby size constant. Direct messages: `Route` from one worker to a user",
        f"on the other, {len(BODY)}-character body. {proc['duration_s']:g} s per run. Idle",
        f"(heartbeats and beats only): {proc['idle_cpu_pct']:.2f} % of a core over "
        f"{IDLE_SECONDS:g} s (/proc counts in 10 ms ticks).",
        "",
        "| users | load | offered /s | achieved /s | CPU % | main thread % | others % "
        "| µs per event | main thread µs per event |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proc["fixed_rate"]:
        lines.append(
            f"| {r['users']:,} | {r['load']} | {r['offered']:,.0f} | {_n(r['events_per_s'])} | "
            f"{_n(r['cpu_pct'])} | {_n(r['main_thread_pct'])} | {_n(r['others_cpu_pct'])} | "
            f"{_n(r['cpu_us_per_event'])} | {_n(r['main_us_per_event'])} |"
        )
    lines += [
        "",
        "Saturation: as fast as the coordinator answers (at most `window` events awaiting a",
        "reply). The generator runs on the same 2 cores: where the coordinator's main thread",
        "is below 100 %, the machine, not the coordinator, was the bound, and the rate is a",
        "lower bound (`derived` below projects one core from the main thread's µs per event).",
        "",
        "| users | load | window | events/s | main thread % | CPU % | generator CPU % "
        "| others % | µs per event | main thread µs per event |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proc["saturation"]:
        lines.append(
            f"| {r['users']:,} | {r['load']} | {r['window']:,} | {_n(r['events_per_s'])} | "
            f"{_n(r['main_thread_pct'])} | {_n(r['cpu_pct'])} | {_n(r['generator_cpu_pct'])} | "
            f"{_n(r['others_cpu_pct'])} | {_n(r['cpu_us_per_event'])} | "
            f"{_n(r['main_us_per_event'])} |"
        )
    lines += [
        "",
        "Memory: RSS of a fresh coordinator as sessions join (a process of its own). Snapshots",
        "(SnapshotRequest -> Snapshot, CPU per snapshot) in the runs above: requests at one",
        "unchanged `seq`, so after the first each is the one already made and encoded",
        "(what every worker resyncing after a restart gets); making one is the pure",
        'table\'s "made" column, and no event is applied meanwhile:',
        "",
        "| sessions | RSS MiB | snapshot CPU ms | main thread ms | snapshot bytes |",
        "|---|---|---|---|---|",
    ]
    snaps = {s["users"]: s for s in proc["snapshot"]}
    for r in proc["rss"]:
        s = snaps.get(r["sessions"])
        snap_cells = "- | - | -"
        if s:
            snap_cells = (
                f"{_n(s['cpu_ms_per_snapshot'])} | {_n(s['main_ms_per_snapshot'])} | {s['bytes']:,}"
            )
        lines.append(f"| {r['sessions']:,} | {_n(r['rss_mib'])} | {snap_cells} |")
    lines += [
        "",
        f"RSS per session: {proc['kib_per_session']:.2f} KiB.",
        "",
        "PUB fan-out: a coordinator with `--batch-window 0` (every event is its own update),",
        f"join/leave churn at {proc['fanout_rate']:,.0f} events/s with 1, 2, 4 SUB sockets, over",
        "ipc:// and over tcp:// on loopback with CURVE (every copy encrypted on its own).",
        f"Median of {proc['fanout_rounds']} runs of {proc['fanout_duration_s']:g} s per row,",
        "the subscriber counts interleaved.",
        "",
        "| transport | subscribers | updates/s | update bytes | CPU % | others % | µs per update "
        "| main thread µs per update |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in proc["fanout"]:
        lines.append(
            f"| {r['transport']} | {r['subscribers']} | {_n(r['updates_per_s'])} | "
            f"{_n(r['update_bytes_mean'])} | {_n(r['cpu_pct'])} | {_n(r['others_cpu_pct'])} | "
            f"{_n(r['cpu_us_per_update'])} | {_n(r['main_us_per_update'])} |"
        )
    slopes = proc["fanout_us_per_subscriber"]
    lines += [
        "",
        "Each more subscriber costs per update (least-squares slope of µs per update over the",
        "subscriber count): " + ", ".join(f"{t} {v:.2f} µs" for t, v in slopes.items()) + ".",
        "",
        "Bytes to one worker: snapshots of a big lobby over each transport, the coordinator's",
        "CPU per KiB sent (building and encoding the snapshot included).",
        "",
        "| transport | users | snapshots | bytes each | CPU ms per snapshot | µs per KiB |",
        "|---|---|---|---|---|---|",
    ]
    for t in proc["transfer"]:
        lines.append(
            f"| {t['transport']} | {t['users']:,} | {t['count']} | {t['bytes']:,} | "
            f"{_n(t['cpu_ms_per_snapshot'])} | {_n(t['us_per_kib'])} |"
        )
    return lines


# =========================================================================== main


def describe_machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "zmq": zmq.zmq_version(),
        "commit": commit or "?",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def measuring_options(argv: Sequence[str] | None) -> list[str]:
    """The command-line options that change what is measured (not where it goes)."""
    given = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for arg in given:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif arg != "--quiet" and not arg.startswith("--json="):
            kept.append(arg)
    return kept


def _counts(text: str) -> list[int]:
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("give positive whole numbers, comma-separated")
    return counts


def _sizes(text: str) -> list[int]:
    sizes = _counts(text)
    if sizes[0] < 2:  # the two workers hold one user each at least
        raise argparse.ArgumentTypeError("give lobby sizes of at least 2, comma-separated")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coordinator_costs.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=[1000, 10000, 50000], help="lobby sizes (%(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=15, help="pure: timed rounds per figure (%(default)s)"
    )
    parser.add_argument(
        "--round-events", type=int, default=1000, help="pure: events per round (%(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="pure: events per update when batched (%(default)s)"
    )
    parser.add_argument(
        "--flush-keys",
        type=_counts,
        default=[1, 10, 100, 1000, 10000],
        help="pure: keys per flush (%(default)s)",
    )
    parser.add_argument("--pure-only", action="store_true", help="skip the coordinator process")
    parser.add_argument(
        "--rate",
        type=float,
        default=10_000,
        help="process: events/s of the fixed-rate runs (%(default)s)",
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        default=8_000,
        help="process: events/s of the fan-out runs (%(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=3.0, help="process: seconds per run (%(default)s)"
    )
    parser.add_argument(
        "--fanout-rounds",
        type=int,
        default=3,
        help="process: fan-out runs per subscriber count (%(default)s)",
    )
    parser.add_argument(
        "--fanout-duration",
        type=float,
        default=2.0,
        help="process: seconds per fan-out run (%(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, no tables")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    log("pure core ...")
    gc.collect()
    result: dict[str, Any] = {
        "machine": describe_machine(),
        "command": " ".join(["python scripts/coordinator_costs.py", *measuring_options(argv)]),
        "pure": measure_pure(
            args.sizes,
            rounds=args.rounds,
            round_events=args.round_events,
            batch=args.batch,
            flush_keys=args.flush_keys,
        ),
    }
    if not args.pure_only:
        log("coordinator process ...")
        result["process"] = measure_process(
            args.sizes,
            rate=args.rate,
            duration=args.duration,
            fanout_rate=args.fanout_rate,
            fanout_rounds=args.fanout_rounds,
            fanout_duration=args.fanout_duration,
            log=log,
        )
    result["derived"] = derive(result)
    result["wall_s"] = time.monotonic() - started
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if not args.quiet:
        print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
