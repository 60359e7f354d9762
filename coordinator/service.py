"""The coordinator shell: ZeroMQ sockets around :class:`~coordinator.core.CoordinatorCore`.

One thread, one poll loop, so every worker message is applied in one order. The loop
drains the ROUTER (worker events) without blocking, handing each message to the core,
then, only when something is due (:attr:`~coordinator.core.CoordinatorCore.due`: a
flush, a beat, the periodic check for silent workers), lets the core do it
(:meth:`~coordinator.core.CoordinatorCore.tick`), and carries out what the core returns.
It decides nothing itself.

One frame per worker per turn: the replies the core addresses to one worker during a
turn of the loop are sent together, as one batch frame
(:class:`~shared.backbone.Outbox`), at the end of the turn (the messages to a worker
keep their order; updates and beats go out on the PUB at once, so an update is always
sent before the acknowledgements that name it). A reply that must be sent alone, a
snapshot, is encoded once per ``(epoch, seq)`` however many workers ask for it.

Sockets: a ROUTER for events and replies, with ``ROUTER_MANDATORY`` so that a reply that
cannot be queued (the worker's queue is at its high-water mark, or the worker is gone)
is an error the core hears about instead of a silent drop; a PUB for updates and beats
(a PUB drops for a slow subscriber by design: the worker sees the gap and resyncs).
Every socket refuses messages over ``--max-message-bytes`` and queues at most ``--hwm``.
Drops are counted by the core and summed in the log at most once a second.

Who speaks for a worker id (:mod:`coordinator.claims`): a routing id the loop has not
seen is checked once, its first frame read with its connection's address and CURVE key;
a process whose worker id another live process holds is answered
:class:`~shared.backbone.Refused` and logged, naming both, and its messages are dropped.
With CURVE, a worker key that is not admitted is logged with its address (by the
authenticator's thread), and so is a handshake that was not encrypted to this
coordinator's key (a socket monitor on the ROUTER: such a peer pins another key).

Webhooks (``--webhook-url``): each update published is offered to the
:class:`~coordinator.webhook_sender.WebhookSender`, which only queues its event in a
bounded outbox; the HTTP happens on the sender's own thread, so a receiver never delays
this loop.

Metrics (:mod:`shared.metrics`): the keys of each published update are recorded as it
is sent; everything else (updates published, lobby size, batch window, flaps, expiries,
replacements, epoch moves) is read from the core whenever it ticks (at least every
:data:`~shared.timings.EXPIRY_CHECK`), so a stream of events costs the metrics nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

from coordinator.claims import Claims, Peer
from coordinator.core import CoordinatorCore, Output, Publish, ToWorker
from coordinator.settings import CoordinatorSettings
from coordinator.webhook_sender import WebhookSender
from shared import backbone as bb
from shared import curve, endpoints, logs, metrics, notify

log = logging.getLogger("coordinator")
noisy = logs.Limited(log)
"""Lines a worker can make the coordinator write over and over: at most a few a second."""
refusals = logs.Limited(log, every=10.0, burst=1)
"""Lines of a misconfiguration that lasts (a worker id in use, a key not admitted): one
every ten seconds for each, while it lasts."""
gate = logs.Limited(log, every=10.0, burst=2)
"""The authenticator thread's own (a limiter is used by one thread)."""

DRAIN_BATCH = 10_000
"""Messages applied in a row (a ``Hello``: one per session) before the loop looks at its
clock (beats, flushes)."""
DROP_LOG_EVERY = 1.0
RELEASE_EVERY = 1.0
"""How often worker ids whose holders are gone are released (see Claims.release)."""
HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)  # (flag arithmetic on enums is slow)
_RCVMORE = int(zmq.RCVMORE)


class Coordinator:
    """Owns the core and the two backbone sockets."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        context: zmq.Context[zmq.Socket[bytes]],
        *,
        webhooks: WebhookSender | None = None,
    ):
        """``webhooks``: the sender that every published update is offered to, if any."""
        self.settings = settings
        self._webhooks = webhooks
        ends = settings.backbone_endpoints
        self._admitted: list[str] = []
        self._key_names: dict[str, str] = {}
        self._claims = Claims()
        self._peers: dict[bytes, str] = {}  # routing id -> worker id, of accepted holders
        self._released_at = float("-inf")
        endpoints.prepare(ends.events, port=settings.port)
        self._lock = endpoints.Lock.take(ends.events, "coordinator")
        try:
            self._keys = self._security(settings, context)
        except Exception:
            self._lock.release()
            raise
        # The lock file holds "EPOCH running" while a coordinator serves, and "EPOCH idle"
        # once one stopped with no worker left: only after "running" may workers still
        # hold sessions that the lobby must be rebuilt from.
        previous, _, state = self._lock.previous.partition(" ")
        self.core = CoordinatorCore(
            settings,
            epoch=bb.new_epoch(),
            now=time.monotonic(),
            previous=previous,
            rebuild=state != "idle",
        )
        self.core.peer_keys = self._admitted
        self._recorded = self.core.epoch
        self._lock.record(f"{self._recorded} running")
        logs.identify(self._recorded)
        metrics.start_coordinator()
        metrics.EPOCH_CHANGES.labels("start").inc()
        self._tally = metrics.Tally()
        self._moves = metrics.EPOCH_CHANGES.labels("move")
        self._shown: tuple[int, float] | None = None  # (lobby users, batch window) set
        self._stopping = False
        self._drops_logged: Counter[str] = Counter()
        self._drops_logged_at = float("-inf")
        self._out: dict[str, bb.Outbox] = {}  # replies of this turn, by worker
        self._snapshot: tuple[bb.Snapshot, bytes] | None = None  # the last one, encoded
        try:
            self.router = self._bind(context, zmq.ROUTER, ends.events)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.pub = self._bind(context, zmq.PUB, ends.updates)
            self._monitor = (
                self.router.get_monitor_socket(HANDSHAKE_EVENTS) if self._keys is not None else None
            )
        except zmq.ZMQError:
            self._stop_auth()
            self._lock.release()
            raise

    def _bind(
        self, context: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str
    ) -> zmq.Socket[bytes]:
        endpoints.prepare(endpoint, port=self.settings.port)
        timing = self.settings.timing
        sock = context.socket(kind)
        self.settings.backbone.configure(
            sock, beat=timing.heartbeat_interval, silence=timing.worker_timeout
        )
        if self._keys is not None:
            curve.make_server(sock, self._keys)
        sock.bind(endpoint)
        return sock

    def _security(
        self, settings: CoordinatorSettings, context: zmq.Context[zmq.Socket[bytes]]
    ) -> curve.KeyPair | None:
        """Load CURVE keys and start the authenticator, or refuse an exposed backbone."""
        backbone = settings.backbone
        secret, clients = backbone.curve_secret_key, backbone.curve_clients
        ends = settings.backbone_endpoints
        if (secret is None) != (clients is None):
            raise curve.BackboneSecurityError(
                "CURVE needs both --curve-secret-key and --curve-clients"
            )
        warning = curve.check_exposure(
            [ends.events, ends.updates], curve_on=secret is not None, plain_tcp=backbone.plain_tcp
        )
        if warning:
            log.warning("%s", warning, extra=logs.event("backbone_exposed"))
        if secret is None or clients is None:
            return None
        keys = curve.load_keypair(secret)
        self._auth = curve.Gatekeeper(
            context, logging.getLogger("coordinator.zap"), refused=self._key_refused
        )
        self._auth.start()
        self._auth.configure_curve(location=curve.authorised_dir(clients))
        self._admitted = curve.authorised_keys(clients)
        self._key_names = curve.key_names(clients)
        log.info(
            "CURVE on: workers must hold a key from %s",
            clients,
            extra=logs.event("curve_on", keys=clients),
        )
        return keys

    def _key_refused(self, address: str, key: str) -> None:
        """The authenticator turned a worker away (on its thread)."""
        clients = self.settings.backbone.curve_clients
        gate.warning(
            "worker_key_refused",
            "refusing a worker at %s: its public key %s is not in --curve-clients %s (a new "
            "machine? copy its KEYS/coordinator/workers/NAME.key there and restart the "
            "coordinator)",
            address,
            key,
            clients,
            address=address,
            key=key,
        )

    # ------------------------------------------------------------------ loop

    @property
    def epoch(self) -> str:
        return self.core.epoch

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        ends = self.settings.backbone_endpoints
        log.info(
            "coordinator ready: events=%s updates=%s epoch=%s",
            ends.events,
            ends.updates,
            self.epoch,
            extra=logs.event(
                "coordinator_ready", events=ends.events, updates=ends.updates, epoch=self.epoch
            ),
        )
        ready = False
        core = self.core
        if self._webhooks is not None:
            self._webhooks.start()
        while not self._stopping:
            now = time.monotonic()
            wait = core.due - now  # (-inf: at once)
            timeout_ms = int(wait * 1000) + 1 if wait > 0 else 0
            polled = poller.poll(timeout_ms)
            if self._monitor is not None and polled:
                self._watch(self._monitor)
            caught_up = self._drain() if polled else True
            now = time.monotonic()
            if now >= self._released_at + RELEASE_EVERY:
                self._released_at = now
                registry = core.registry
                for routing in self._claims.release(registry.__contains__):
                    self._peers.pop(routing, None)
            if now >= core.due:
                # Behind on input (after a stall): heartbeats may be waiting in the queue,
                # so nobody is presumed dead until it is read.
                self._carry_out(core.tick(now, time.time(), expire=caught_up))
                self._record()
                self._log_drops(now)
                logs.flush_suppressed()
                if not ready and not core.registry.rebuilding(now):
                    ready = True  # every answer is the truth from here on: "offline" too
                    users = len(core.lobby)
                    log.info(
                        "lobby complete: %d users",
                        users,
                        extra=logs.event("lobby_complete", users=users),
                    )
                    notify.ready(f"coordinator ready: epoch {self.epoch}")
            self._flush()
        notify.stopping("coordinator stopping")
        if self._webhooks is not None:
            self._webhooks.stop()
        if not len(self.core.registry):  # every worker said goodbye: nothing to rebuild
            self._lock.record(f"{self._recorded} idle")
        if self._monitor is not None:
            self.router.disable_monitor()
            self._monitor.close(0)
        self.router.close(0)
        self.pub.close(0)
        self._stop_auth()
        self._lock.release()

    def _stop_auth(self) -> None:
        if self._keys is not None:
            self._auth.stop()

    def _drain(self) -> bool:
        """Apply up to about :data:`DRAIN_BATCH` queued messages (so beats and flushes
        keep time); returns whether the queue is empty."""
        router, peers = self.router, self._peers
        handled = 0
        while handled < DRAIN_BATCH:
            try:
                ident = router.recv(_NOBLOCK)
            except zmq.Again:
                return True
            worker = peers.get(ident)
            if worker is None:
                handled += self._stranger(ident)
                continue
            # Two parts, [identity, frame], or it is not one of ours. (Plain recv calls:
            # recv_multipart's wrapper was a fifth of the coordinator's time.)
            frame = router.recv(_NOBLOCK) if router.get(_RCVMORE) else b""
            if router.get(_RCVMORE):
                self._skip_rest()
                continue
            handled += self.handle(worker, frame)
        return False

    def _skip_rest(self) -> None:
        while self.router.get(_RCVMORE):
            self.router.recv(_NOBLOCK)

    def _stranger(self, ident: bytes) -> int:
        """The first frame from routing id ``ident`` (or one from a process refused so
        far): may it speak for its worker id? Returns how many messages were applied."""
        router = self.router
        body = router.recv(_NOBLOCK, copy=False) if router.get(_RCVMORE) else None
        if router.get(_RCVMORE):
            self._skip_rest()
            return 0
        worker, _ = bb.split_routing_id(ident)
        if body is None:  # not one of ours: logged as undecodable, and it claims nothing
            return self.handle(worker, b"")
        peer = Peer(ident, *self._origin(body))
        verdict = self._claims.claim(worker, peer, live=worker in self.core.registry)
        if verdict.accepted:
            if verdict.other is not None:
                self._peers.pop(verdict.other.routing, None)
            self._peers[ident] = worker
            return self.handle(worker, body.bytes)
        refusals.warning(
            "worker_id_in_use",
            "refusing worker %s from %s: a live worker from %s holds that id (two machines "
            "with one name: give each its own key directory, or --name; or the holder's "
            "machine restarted and the id is free once it is silent for --worker-timeout)",
            worker,
            peer,
            verdict.other,
            worker=worker,
            refused=str(peer),
            holder=str(verdict.other),
        )
        refused = bb.Refused(worker, str(verdict.other))
        try:
            router.send(ident, _MORE_NOBLOCK)
            router.send(bb.encode(refused), _NOBLOCK)
        except zmq.ZMQError:
            pass  # it is gone, or not reading: it hears nothing, as before it asked
        return 1

    def _origin(self, frame: zmq.Frame) -> tuple[str, str]:
        """Where a frame's connection comes from, and its key (the name of the key's file
        when known): "" for what the transport does not tell."""
        found = []
        for prop in ("Peer-Address", "User-Id"):
            try:
                found.append(str(frame.get(prop)))
            except zmq.ZMQError:
                found.append("")
        address, key = found
        return address, self._key_names.get(key, key)

    def _watch(self, monitor: zmq.Socket[bytes]) -> None:
        """Log the handshakes that failed on the ROUTER (its monitor's events)."""
        while True:
            try:
                event = recv_monitor_message(monitor, _NOBLOCK)
            except zmq.Again:
                return
            why = curve.handshake_failure(int(event["event"]), int(event["value"]))
            if why is not None:
                where = event["endpoint"].decode("utf-8", "replace")
                refusals.warning(
                    "worker_handshake_failed",
                    "a worker's CURVE handshake on %s failed: %s; its coordinator.key must "
                    "be this coordinator's public key (from the same key directory)",
                    where,
                    why,
                    endpoint=where,
                    error=why,
                )

    def handle(self, worker: str, frame: bytes) -> int:
        """Apply one frame (a message or a batch) from ``worker``; returns how many
        messages it held, a ``Hello`` counting one per session (registering thousands
        of sessions takes tens of milliseconds: after one, the loop looks at its clock
        and beats before the next, so the other workers never find it silent). What is
        not ours is logged and dropped."""
        messages, errors = bb.decode_batch(frame)
        for error in errors:
            noisy.warning(
                "undecodable_frame",
                "dropping undecodable frame from worker %s: %s",
                worker,
                error,
                worker=worker,
                error=error,
            )
        core, now, wall = self.core, time.monotonic(), time.time()
        weight = len(messages)
        for msg in messages:
            if type(msg) is bb.Hello:
                weight += len(msg.sessions)
            self._carry_out(core.handle(worker, msg, now, wall))
        if core.epoch != self._recorded:  # moved above an epoch a worker reported
            self._recorded = core.epoch
            self._lock.record(f"{self._recorded} running")
            logs.identify(self._recorded)
        return weight

    def _carry_out(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, ToWorker):
                self._queue(out.worker, out.message)
            elif isinstance(out, Publish):
                self.pub.send(bb.encode(out.message))  # PUB never blocks: past the HWM it drops
                if isinstance(out.message, bb.Update):
                    update = out.message
                    metrics.LOBBY_UPDATE_KEYS.observe(len(update.joined) + len(update.left))
                    if self._webhooks is not None:
                        self._webhooks.offer(update)

    def _queue(self, worker: str, msg: bb.DownMessage) -> None:
        """Add ``msg`` to the frame ``worker`` gets at the end of this turn."""
        box = self._out.get(worker)
        if box is None:
            box = self._out[worker] = bb.Outbox()
        frame = self._snapshot_frame(msg) if isinstance(msg, bb.Snapshot) else None
        for sent in box.add(msg, frame):
            self._send_to(worker, sent)

    def _snapshot_frame(self, msg: bb.Snapshot) -> bytes:
        """The encoding of ``msg``, made once: the core hands every worker that asks the
        same message until the lobby changes."""
        cached = self._snapshot
        if cached is None or cached[0] is not msg:
            cached = self._snapshot = (msg, bb.encode(msg))
        return cached[1]

    def _flush(self) -> None:
        """Send each worker the frame of what this turn addressed to it."""
        if self._out:
            out, self._out = self._out, {}
            for worker, box in out.items():
                if len(box):
                    self._send_to(worker, box.take())
        cached = self._snapshot
        if cached is not None and cached[0] is not self.core.current_snapshot:
            self._snapshot = None  # out of date: not kept in memory

    def _send_to(self, worker: str, sent: bb.Sent) -> None:
        frame, messages = sent
        try:
            self.router.send(self._claims.routing(worker) or worker.encode(), _MORE_NOBLOCK)
            self.router.send(frame, _NOBLOCK)
        except zmq.ZMQError as exc:  # EAGAIN: its queue is full; EHOSTUNREACH: gone
            log.debug(
                "cannot queue %d messages for worker %s: %s",
                len(messages),
                worker,
                exc,
                extra=logs.event(
                    "reply_not_queued",
                    worker=worker,
                    kinds=sorted({m.TAG for m in messages}),
                    error=str(exc),
                ),
            )
            for msg in messages:
                assert isinstance(msg, bb.DownMessage)
                self.core.undelivered(worker, msg)
                metrics.BACKBONE_DROPPED.labels("coordinator", msg.TAG).inc()

    def _record(self) -> None:
        """Feed the core's figures to the metrics (a few comparisons; a metric is
        written only when its figure changed)."""
        core, tally = self.core, self._tally
        shown = (core.lobby.online, core.batch_window)
        if shown != self._shown:
            self._shown = shown
            metrics.LOBBY_USERS.set(shown[0])
            metrics.BATCH_WINDOW.set(shown[1])
        tally.feed(metrics.LOBBY_UPDATES, core.lobby.seq)  # one per update, from 0
        tally.feed(metrics.FLAPS, core.flaps.total)
        tally.feed(metrics.WORKERS_EXPIRED, core.workers_expired)
        tally.feed(metrics.GHOSTS_REAPED, core.ghosts_reaped)
        tally.feed(metrics.SESSIONS_REPLACED, core.lobby.replacements)
        tally.feed(self._moves, core.epoch_changes)

    def _log_drops(self, now: float) -> None:
        dropped = self.core.dropped
        if dropped != self._drops_logged and now - self._drops_logged_at >= DROP_LOG_EVERY:
            new = dropped - self._drops_logged
            log.warning(
                "could not queue %d replies to workers since the last report: %s",
                sum(new.values()),
                ", ".join(f"{tag} {n}" for tag, n in sorted(new.items())),
                extra=logs.event("replies_dropped", count=sum(new.values()), kinds=dict(new)),
            )
            self._drops_logged = dropped.copy()
            self._drops_logged_at = now
