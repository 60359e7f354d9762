"""The coordinator shell: wires a :class:`~coordinator.lobby.Lobby` to ZeroMQ.

One thread, one poll loop, so every worker event is applied in one order. The loop:

1. drains the ROUTER (events from workers) without blocking, applying each event;
2. publishes when the batching window since the first unpublished change has passed
   (at once with a window of 0): the delta on PUB first, then each worker's
   acknowledgements and kicks on the ROUTER, so an ``AuthAck`` never names a ``seq``
   that was not published;
3. every heartbeat interval publishes a :class:`~shared.backbone.Beat`; and on every
   turn (at least every 0.2 s) drops the sessions of workers that have been silent for
   longer than the worker timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator

from coordinator.batching import BatchWindow
from coordinator.lobby import Flush, Lobby, Session
from shared import backbone as bb
from shared import curve, endpoints, notify
from shared.protocol import is_hex_key

log = logging.getLogger("coordinator")


@dataclass(frozen=True, kw_only=True, slots=True)
class CoordinatorSettings:
    # Backbone
    events_endpoint: str
    updates_endpoint: str
    # Timeouts
    batch_window: float = 0.005
    """Seconds to gather changes into one net-effect update while the lobby is quiet
    (default 5 ms, a latency no person notices). 0 disables batching."""
    max_batch_window: float = 0.05
    """The widest the window grows while changes keep coming (default 50 ms: at most
    20 updates a second to every client under any load; see coordinator.batching)."""
    heartbeat_interval: float = 1.0
    """Seconds between Beats on PUB (workers use them to notice a lost update or a
    silent coordinator)."""
    worker_timeout: float = 2.5
    """Seconds of silence after which a worker is presumed dead and its sessions leave
    (default 2.5 s: the loop checks at least every 0.2 s, so a dead worker's users are
    gone within 3 s, while one late heartbeat never makes a live worker's users flap)."""
    # Limits
    hwm: int = 100_000
    """ZeroMQ high-water mark of each socket, in messages. Past it PUB drops updates
    for a slow worker (which then sees a gap and resyncs from a snapshot) and ROUTER
    drops replies (the worker's auth or route then times out with 1013/unavailable)."""
    # Security
    curve_secret_key: str | None = None
    """The coordinator's CURVE certificate (``.key_secret``); with
    ``curve_clients``, turns CURVE on. Required to listen beyond loopback."""
    curve_clients: str | None = None
    """Directory of the public keys (``*.key``) of the workers allowed in."""


class Coordinator:
    """Owns the lobby and the two backbone sockets."""

    def __init__(self, settings: CoordinatorSettings, context: zmq.Context[zmq.Socket[bytes]]):
        self.settings = settings
        self._keys = self._security(settings, context)
        self.epoch = bb.new_epoch()
        self.lobby = Lobby(self.epoch)
        self._last_seen: dict[str, float] = {}
        self._flush_at: float | None = None
        ceiling = max(settings.batch_window, settings.max_batch_window)
        self._window = BatchWindow(settings.batch_window, ceiling if settings.batch_window else 0)
        self._stopping = False
        try:
            self.router = self._bind(context, zmq.ROUTER, settings.events_endpoint)
            self.pub = self._bind(context, zmq.PUB, settings.updates_endpoint)
        except zmq.ZMQError:
            self._stop_auth()
            raise
        self._handlers: dict[type[bb.Message], Callable[[str, bb.Message], None]] = {
            bb.Hello: self._on_hello,
            bb.Heartbeat: self._on_heartbeat,
            bb.Authed: self._on_authed,
            bb.Closed: self._on_closed,
            bb.Goodbye: self._on_goodbye,
            bb.SnapshotRequest: self._on_snapshot_request,
            bb.Route: self._on_route,
            bb.RouteResult: self._on_route_result,
        }

    def _bind(
        self, context: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str
    ) -> zmq.Socket[bytes]:
        endpoints.prepare(endpoint)
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.settings.hwm)
        sock.setsockopt(zmq.RCVHWM, self.settings.hwm)
        if self._keys is not None:
            curve.make_server(sock, self._keys)
        sock.bind(endpoint)
        return sock

    def _security(
        self, settings: CoordinatorSettings, context: zmq.Context[zmq.Socket[bytes]]
    ) -> curve.KeyPair | None:
        """Load CURVE keys and start the authenticator, or refuse an exposed backbone."""
        wanted = (settings.curve_secret_key, settings.curve_clients)
        ends = [settings.events_endpoint, settings.updates_endpoint]
        if wanted == (None, None):
            curve.check_exposure(ends, curve_on=False)
            return None
        if None in wanted:
            raise curve.BackboneSecurityError(
                "CURVE needs both --curve-secret-key and --curve-clients"
            )
        assert settings.curve_secret_key is not None and settings.curve_clients is not None
        keys = curve.load_keypair(settings.curve_secret_key)
        self._auth = ThreadAuthenticator(context, log=logging.getLogger("coordinator.zap"))
        self._auth.start()
        self._auth.configure_curve(location=curve.authorised_dir(settings.curve_clients))
        log.info("CURVE on: workers must hold a key from %s", settings.curve_clients)
        return keys

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        next_beat = time.monotonic()
        log.info(
            "coordinator ready: events=%s updates=%s epoch=%s",
            self.settings.events_endpoint,
            self.settings.updates_endpoint,
            self.epoch,
        )
        notify.ready(f"coordinator ready: epoch {self.epoch}")
        while not self._stopping:
            now = time.monotonic()
            wake = min(next_beat, self._flush_at or next_beat)
            timeout_ms = max(0, min(200, int((wake - now) * 1000) + 1))
            if poller.poll(timeout_ms):
                self._drain()
            now = time.monotonic()
            if self._flush_at is not None and now >= self._flush_at:
                self.publish()
            self._expire_workers(now)
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_interval
                self._send_pub(bb.Beat(self.epoch, self.lobby.seq))
        notify.stopping("coordinator stopping")
        self.router.close(0)
        self.pub.close(0)
        self._stop_auth()

    def _stop_auth(self) -> None:
        if self._keys is not None:
            self._auth.stop()

    def _drain(self, limit: int = 10_000) -> None:
        """Apply up to ``limit`` queued events (bounded so beats and flushes keep time)."""
        router = self.router
        for _ in range(limit):
            try:
                ident = router.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            # Two parts, [identity, frame], or it is not one of ours. (Plain recv calls:
            # recv_multipart's wrapper was a fifth of the coordinator's time.)
            frame = router.recv(zmq.NOBLOCK) if router.get(zmq.RCVMORE) else b""
            if router.get(zmq.RCVMORE):
                while router.get(zmq.RCVMORE):
                    router.recv(zmq.NOBLOCK)
                continue
            self.handle(ident.decode("utf-8", "replace"), frame)

    def handle(self, worker: str, frame: bytes) -> None:
        """Apply one event from ``worker``; a frame that is not ours is logged and dropped."""
        try:
            msg = bb.decode(frame)
        except bb.BackboneDecodeError as exc:
            log.warning("dropping undecodable frame from worker %s: %s", worker, exc)
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("dropping %s from worker %s: not an event", msg.TAG, worker)
            return
        if worker not in self._last_seen and not isinstance(msg, bb.Hello | bb.Goodbye):
            # We restarted, or gave this worker up for dead: it holds sessions we do
            # not know. Its events still count (so its new sessions can expire with
            # it), and it re-registers the rest.
            log.info("unknown worker %s; asking it to announce its sessions", worker)
            self._send_to(worker, bb.Reannounce())
        self._last_seen[worker] = time.monotonic()
        handler(worker, msg)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self.lobby.pending:
            return
        if self._window.current <= 0:
            self.publish()
        elif self._flush_at is None:
            self._flush_at = time.monotonic() + self._window.current

    def publish(self) -> Flush:
        """Publish everything pending: delta first, then acks and kicks."""
        self._flush_at = None
        result = self.lobby.flush()
        if result.delta is not None:
            d = result.delta
            self._send_pub(bb.Update(self.epoch, d.seq, d.joined, d.left))
            self._window.flushed(time.monotonic())
        for session, seq in result.acks:
            self._send_to(session.worker, bb.AuthAck(session.conn, self.epoch, seq))
        for session in result.kicks:
            self._send_to(session.worker, bb.Kick(session.conn))
        return result

    # ------------------------------------------------------------------ events

    def _on_hello(self, worker: str, msg: bb.Message) -> None:
        assert isinstance(msg, bb.Hello)
        held = {conn: key for conn, key, _, _ in msg.sessions}
        # The Hello is the worker's whole truth: anything else we hold for it is gone.
        for conn, key in self.lobby.sessions_of(worker).items():
            if held.get(conn) != key:
                self.lobby.remove_user(key, Session(worker, conn))
        for conn, key, epoch, seq in msg.sessions:
            if is_hex_key(key):
                self.lobby.restore_user(key.lower(), Session(worker, conn), (epoch, seq))
        log.info("worker %s registered with %d sessions", worker, len(msg.sessions))
        self._send_to(worker, bb.Welcome(self.epoch))

    def _on_heartbeat(self, worker: str, msg: bb.Message) -> None:
        pass  # handle() already recorded that the worker is alive

    def _on_authed(self, worker: str, msg: bb.Message) -> None:
        assert isinstance(msg, bb.Authed)
        if not is_hex_key(msg.key):
            log.warning("worker %s sent an auth for a malformed key; ignored", worker)
            return
        self.lobby.add_user(msg.key.lower(), Session(worker, msg.conn))

    def _on_closed(self, worker: str, msg: bb.Message) -> None:
        assert isinstance(msg, bb.Closed)
        self.lobby.remove_user(msg.key.lower(), Session(worker, msg.conn))

    def _on_goodbye(self, worker: str, msg: bb.Message) -> None:
        dropped = self.lobby.drop_worker(worker)
        self._last_seen.pop(worker, None)
        log.info("worker %s said goodbye; %d sessions leave", worker, dropped)

    def _on_snapshot_request(self, worker: str, msg: bb.Message) -> None:
        seq, users = self.lobby.snapshot()
        self._send_to(worker, bb.Snapshot(self.epoch, seq, users))

    def _on_route(self, worker: str, msg: bb.Message) -> None:
        assert isinstance(msg, bb.Route)
        # Route by the published lobby: its sessions have been acknowledged, so the
        # recipient's worker knows the connection and its client has (or is about to
        # get) auth_ok before the message.
        target = self.lobby.get_published(msg.to)
        if target is None:
            self._send_to(worker, bb.RouteDone(msg.route, "offline"))
            return
        deliver = bb.Deliver(worker, msg.route, target.conn, msg.sender, msg.msg_id, msg.body)
        self._send_to(target.worker, deliver)

    def _on_route_result(self, worker: str, msg: bb.Message) -> None:
        assert isinstance(msg, bb.RouteResult)
        self._send_to(msg.origin, bb.RouteDone(msg.route, msg.status))

    def _expire_workers(self, now: float) -> None:
        deadline = now - self.settings.worker_timeout
        for worker in [w for w, seen in self._last_seen.items() if seen < deadline]:
            del self._last_seen[worker]
            dropped = self.lobby.drop_worker(worker)
            log.warning(
                "worker %s silent for %.1fs; %d sessions leave",
                worker,
                self.settings.worker_timeout,
                dropped,
            )
            self._schedule_flush()

    # ------------------------------------------------------------------ output

    def _send_to(self, worker: str, msg: bb.Message) -> None:
        try:
            self.router.send(worker.encode(), zmq.SNDMORE | zmq.NOBLOCK)
            self.router.send(bb.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply queue to worker %s is full; dropped %s", worker, msg.TAG)

    def _send_pub(self, msg: bb.PubMessage) -> None:
        self.pub.send(bb.encode(msg))  # PUB never blocks: past the HWM it drops
