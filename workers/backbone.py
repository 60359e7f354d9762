"""The worker's ZeroMQ side: its sockets, reading batches, and the frames it sends.

Theory of operation
-------------------
Plain ZeroMQ sockets: the SUB (updates and beats), the DEALER (the coordinator's
replies; events go up on it), the results PULL (other workers' results) and a PUSH to
each other worker's results endpoint that this one reports to. A reader task waits for
a socket's FD and then hands up to :data:`READ_BATCH` messages to the core
(:class:`~workers.core.WorkerCore`), as one batch (so that updates that queued up are
written together); sends are non-blocking. (``zmq.asyncio`` costs a future and several
``EVENTS`` checks per message: a third of a worker's CPU when messaging.)

The heartbeat does not wait for the loop (:meth:`Backbone.start_pulse`): a thread sends
each ``Heartbeat`` on the DEALER itself, between the loop's own uses of it (a lock
serialises every use of that socket, which is what ZeroMQ asks of a socket shared by
threads, and the thread wakes the DEALER's reader afterwards, as its edge-triggered FD
may not fire after another thread's send). So however much work the clients push at the
loop, and however late its turns come, the coordinator hears the worker every
``heartbeat_interval`` and never gives up a worker that is only busy: its users are not
shown as gone, nor answered ``offline``, while they are connected. A loop that has not
turned for ``cutoff_grace`` is not serving anyone, though, so the thread beats only while
the loop turned within that time (its ticker stamps each turn); a worker stuck for
longer is given up as dead, as it should be.

What one turn of the loop sends to the coordinator, or to one other worker's results
endpoint, goes out at the end of the turn as one frame (:class:`~shared.backbone.Outbox`,
bounded), so a busy worker pays ZeroMQ once per peer per turn, not once per message.
A message that cannot be queued is handed back to the core (:meth:`WorkerCore.lost`),
which decides what repairs it.

What the coordinator cannot say itself is logged here, at most once in ten seconds each
while it lasts: that it refuses this process because another holds its worker id
(:class:`~shared.backbone.Refused`), and, with CURVE, that the handshake with it failed
(a socket monitor on the DEALER, read by the heartbeat thread): the coordinator does
not admit this machine's key, or is not the one whose key this worker pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from shared import backbone as bb
from shared import curve, endpoints, logs
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.core import WorkerCore

log = logging.getLogger("workers")
noisy = logs.Limited(log)
"""Lines the coordinator's messages can make the worker write over and over."""
refusals = logs.Limited(log, every=10.0, burst=1)
"""A refusal that lasts (the worker id in use): one line every ten seconds."""
handshakes = logs.Limited(log, every=10.0, burst=1)
"""The heartbeat thread's (a limiter is used by one thread): failed handshakes."""

READ_BATCH: Final = 256
"""Backbone messages handled in a row before clients' frames get a turn."""
MAX_PEERS: Final = 64
"""Result sockets to other workers kept open (the least recently used is closed)."""
SHUTDOWN_LINGER_MS: Final = 1000
"""How long the DEALER may keep trying to hand ``Goodbye`` over on shutdown (every
other socket lingers 0: a dead coordinator must never hold a worker up)."""

_NOBLOCK: Final = int(zmq.NOBLOCK)  # (flag arithmetic on pyzmq's enums is slow)
HANDSHAKE_EVENTS: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


class Backbone:
    """The sockets of one worker. Opening them checks the backbone's safety: raises
    :class:`~shared.curve.BackboneSecurityError`,
    :class:`~shared.endpoints.UnsafeDirectory`, :class:`~shared.endpoints.EndpointInUse`
    or :class:`~shared.options.SettingsError` for a backbone it must not use."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.core: WorkerCore[Any] | None = None
        """Where input goes (set by the shell before anything is read)."""
        ends = settings.backbone_endpoints
        self.results_endpoint = settings.backbone.results(ends.events)
        self._curve = _curve_keys(settings)
        warning = curve.check_exposure(
            [ends.events, ends.updates, self.results_endpoint],
            curve_on=self._curve is not None,
            plain_tcp=settings.backbone.plain_tcp,
        )
        if warning:
            log.warning("%s", warning, extra=logs.event("backbone_exposed"))
        port = settings.network.port
        for endpoint in (ends.events, ends.updates, self.results_endpoint):
            endpoints.prepare(endpoint, port=port)
        self._lock = endpoints.Lock.take(self.results_endpoint, f"worker {settings.worker_id}")
        self.results_key = "" if self._curve is None else self._curve[0].public.decode()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._admitted: frozenset[str] = frozenset()
        self._auth: ThreadAuthenticator | None = None
        if self._curve is not None:
            # The results socket is a CURVE server: without this any key would do.
            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("workers.zap"))
            self._auth.start()
            self._auth.configure_curve_callback("*", credentials_provider=self)
        self.sub = self._socket(zmq.SUB)
        self.dealer = self._socket(zmq.DEALER)
        self._monitor = (
            self.dealer.get_monitor_socket(HANDSHAKE_EVENTS) if self._curve is not None else None
        )
        self.refused: str | None = None
        """Why the coordinator refuses this process (its worker id is held), if it does."""
        self.results = self._socket(zmq.PULL, server=True)
        self._peers: OrderedDict[str, zmq.Socket[bytes]] = OrderedDict()
        # What this turn of the loop sends: one frame each to the coordinator and to
        # each other worker's results endpoint, at the end of the turn (see flush).
        self._up = bb.Outbox()
        self._results_out: dict[zmq.Socket[bytes], bb.Outbox] = {}
        self._flush_due = False
        self._closed = False
        # Wake-ups of the readers waiting on each socket (see _readable).
        self._wakers: dict[zmq.Socket[bytes], Callable[[], None]] = {}
        # The DEALER is shared with the heartbeat thread (see start_pulse).
        self._dealer_lock = threading.Lock()
        self._turned = time.monotonic()  # the loop's last turn (see drain)
        self._pulse: threading.Thread | None = None
        self._pulse_stop = threading.Event()

    def _socket(self, kind: int, *, server: bool = False) -> zmq.Socket[bytes]:
        timing = self.settings.timing
        sock = self._ctx.socket(kind)
        self.settings.backbone.configure(
            sock, beat=timing.heartbeat_interval, silence=timing.coordinator_timeout
        )
        if self._curve is not None:
            if server:
                curve.make_server(sock, self._curve[0])
            else:
                curve.make_client(sock, *self._curve)
        return sock

    def admit(self, keys: frozenset[str]) -> None:
        """Take results from the workers with these public keys (Z85) alone: the ones
        the coordinator admits, as its ``Welcome`` said. Until then, from none."""
        self._admitted = keys | {self.results_key}

    def callback(self, domain: str, key: bytes) -> bool:
        """The authenticator's question (from its thread): may the client with public
        key ``key`` (Z85) connect to the results socket?"""
        return key.decode("ascii", "replace") in self._admitted

    def connect(self) -> None:
        """Connect to the coordinator (see :meth:`bind` for the results endpoint)."""
        ends = self.settings.backbone_endpoints
        # SUB first: whatever is published from now on reaches us, and the snapshot we
        # ask for next covers everything before (slow-joiner rule).
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(ends.updates)
        self.dealer.setsockopt(zmq.ROUTING_ID, bb.routing_id(self.settings.worker_id))
        self.dealer.connect(ends.events)

    def bind(self) -> None:
        """Bind the results endpoint; raises :class:`zmq.ZMQError` if it cannot."""
        self.results.bind(self.results_endpoint)
        # The address actually bound: a port of * (the system's pick) becomes a number.
        self.results_endpoint = self.results.getsockopt_string(zmq.LAST_ENDPOINT)

    def start_pulse(self) -> None:
        """Start the heartbeat thread (see the module's docstring); :meth:`close` stops
        it."""
        loop = asyncio.get_running_loop()
        self._pulse = threading.Thread(
            target=self._beat, args=(loop,), name="heartbeat", daemon=True
        )
        self._pulse.start()

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        timing = self.settings.timing
        beat = bb.Heartbeat(self.settings.worker_id)
        frame = bb.encode(beat)
        while not self._pulse_stop.wait(timing.heartbeat_interval):
            self._watch()
            if time.monotonic() - self._turned > timing.cutoff_grace:
                continue  # the loop is stuck, not busy: let the coordinator know
            lost = False
            with self._dealer_lock:
                if self._closed:
                    return
                try:
                    self.dealer.send(frame, _NOBLOCK)
                except zmq.Again:  # past SNDHWM: the coordinator is not reading
                    lost = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are stopping
                loop.call_soon_threadsafe(self._after_beat, beat if lost else None)

    def _watch(self) -> None:
        """Log the handshakes with the coordinator that failed (its DEALER's monitor;
        on the heartbeat thread, the monitor's only reader)."""
        if self._monitor is None:
            return
        while True:
            try:
                event = recv_monitor_message(self._monitor, _NOBLOCK)
            except zmq.ZMQError:  # none waiting (or closed: stopping)
                return
            kind, value = int(event["event"]), int(event["value"])
            why = curve.handshake_failure(kind, value)
            if why is None:
                continue
            backbone = self.settings.backbone
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                advice = (
                    f"this machine's public key {self.results_key} is not among the "
                    "coordinator's workers/ (add the machine to the cluster's key directory "
                    "with make keys, copy its .key there and restart the coordinator)"
                )
            else:
                advice = (
                    f"--curve-server-key {backbone.curve_server_key} must be the "
                    "coordinator's public key (the coordinator.key of the key directory the "
                    "coordinator's keys came from)"
                )
            where = event["endpoint"].decode("utf-8", "replace")
            handshakes.log(
                logging.ERROR,
                "coordinator_handshake_failed",
                "the CURVE handshake with the coordinator at %s failed: %s; %s",
                where,
                why,
                advice,
                endpoint=where,
                error=why,
            )

    def on_refused(self, msg: bb.Message) -> None:
        """The coordinator refuses this process: another holds its worker id."""
        assert isinstance(msg, bb.Refused)
        self.refused = f"worker id {msg.worker} is held by a live worker from {msg.holder}"
        if self.core is not None:
            self.core.figures.join_refused = self.refused
        refusals.log(
            logging.ERROR,
            "worker_id_in_use",
            "the coordinator refuses this worker: %s. Either two machines have one name "
            "(give each its own key directory, which make keys names, or its own --name), "
            "or this machine restarted and its previous workers are not yet presumed dead "
            "(that clears within the coordinator's --worker-timeout). Serving nobody; "
            "trying again while it lasts",
            self.refused,
            worker=msg.worker,
            holder=msg.holder,
        )

    def _after_beat(self, lost: bb.Heartbeat | None) -> None:
        """On the loop, after a beat: count it if it was lost (as the core counts every
        message it could not queue), and wake the DEALER's reader."""
        if lost is not None and self.core is not None:
            self.core.lost(lost)
        self._wake_dealer()

    def turned(self) -> None:
        """The loop has turned (once a tick, from :meth:`drain`): beats may go on."""
        self._turned = time.monotonic()

    def _wake_dealer(self) -> None:
        if (wake := self._wakers.get(self.dealer)) is not None:
            wake()

    def stop_pulse(self) -> None:
        """Stop the heartbeat thread (before ``Goodbye``: nothing may follow it)."""
        self._pulse_stop.set()
        if self._pulse is not None:
            self._pulse.join()
            self._pulse = None

    def close(self, linger_ms: int) -> None:
        self.stop_pulse()
        self._closed = True
        if self._monitor is not None:
            self.dealer.disable_monitor()
            self._monitor.close(linger=0)
        self.sub.close(linger=0)
        self.results.close(linger=0)
        for peer in self._peers.values():
            peer.close(linger=0)
        self.dealer.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        self._lock.release(remove=True)  # the results socket is named after this worker

    # ------------------------------------------------------------------ out

    def up(self, msg: bb.UpMessage) -> None:
        """Queue ``msg`` for the coordinator: it goes out with everything else this turn
        of the loop sends there, in one frame (:meth:`flush`); a frame that cannot be
        queued is accounted for message by message (:meth:`WorkerCore.lost`)."""
        for sent in self._up.add(msg):
            self._send_up(sent)
        self._flush_soon()

    def report(self, peer: zmq.Socket[bytes], result: bb.RouteDone) -> None:
        """Queue ``result`` for the worker behind ``peer`` (from :meth:`peer`)."""
        box = self._results_out.get(peer)
        if box is None:
            box = self._results_out[peer] = bb.Outbox()
        for sent in box.add(result):
            self._send_result(peer, sent)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send what this turn of the loop queued: one frame to the coordinator, one to
        each worker that gets results."""
        self._flush_due = False
        if self._closed:
            return
        if len(self._up):
            self._send_up(self._up.take())
        if self._results_out:
            out, self._results_out = self._results_out, {}
            for sock, box in out.items():
                if len(box):
                    self._send_result(sock, box.take())

    def _send_up(self, sent: bb.Sent) -> None:
        frame, messages = sent
        try:
            with self._dealer_lock:
                self.dealer.send(frame, _NOBLOCK)
        except zmq.Again:  # past SNDHWM: the coordinator is not reading
            assert self.core is not None
            for msg in messages:
                self.core.lost(msg)
        finally:
            # A send may take in pending input without the (edge-triggered) FD firing.
            if (wake := self._wakers.get(self.dealer)) is not None:
                wake()

    def _send_result(self, sock: zmq.Socket[bytes], sent: bb.Sent) -> None:
        frame, messages = sent
        try:
            sock.send(frame, _NOBLOCK)
        except zmq.Again:  # cannot happen: there was room when the first was added
            assert self.core is not None
            self.core.results_lost(len(messages))

    def peer(self, endpoint: str, key: str) -> zmq.Socket[bytes] | None:
        """The socket to another worker's results endpoint if a result can be queued for
        it now: there is room for a message, or there was when this turn's frame for it
        was begun (nothing was sent there since, so the one frame still fits)."""
        sock = self._peer(endpoint, key)
        if sock is None:
            return None
        box = self._results_out.get(sock)
        return sock if (box is not None and len(box) > 0) or _can_send(sock) else None

    def _peer(self, endpoint: str, key: str) -> zmq.Socket[bytes] | None:
        """The socket to another worker's results endpoint (kept, least recently used
        closed past :data:`MAX_PEERS`); ``None`` if it cannot be used safely."""
        sock = self._peers.get(endpoint)
        if sock is not None:
            self._peers.move_to_end(endpoint)
            return sock
        if not endpoint or (self._curve is not None and not key):
            return None
        try:
            if endpoint.startswith("ipc://"):
                path = endpoints.ipc_path(endpoint)
                assert path is not None
                endpoints.check_private_dir(path.parent)
            sock = self._ctx.socket(zmq.PUSH)
            timing = self.settings.timing
            self.settings.backbone.configure(
                sock, beat=timing.heartbeat_interval, silence=timing.coordinator_timeout
            )
            if self._curve is not None:
                curve.make_client(sock, self._curve[0], key.encode())
            sock.connect(endpoint)
        except (zmq.ZMQError, endpoints.UnsafeDirectory, ValueError) as exc:
            noisy.warning(
                "peer_unreachable",
                "cannot reach worker results endpoint %s: %s",
                endpoint,
                exc,
                endpoint=endpoint,
                error=str(exc),
            )
            return None
        self._peers[endpoint] = sock
        if len(self._peers) > MAX_PEERS:
            _, oldest = self._peers.popitem(last=False)
            box = self._results_out.pop(oldest, None)
            if box is not None and len(box):
                self._send_result(oldest, box.take())
            # Linger: results already queued there are still handed over.
            oldest.close(linger=SHUTDOWN_LINGER_MS)
        return sock

    # ------------------------------------------------------------------ in

    async def read(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            await self._readable(sock)
            if self.read_some(sock, READ_BATCH) >= READ_BATCH:
                await asyncio.sleep(0)  # a full batch: let the clients' frames in

    def drain(self) -> None:
        """Before a tick: wake every reader (a safety net for the edge-triggered FD: a
        wake-up it failed to signal costs at most one tick, never a stalled backbone),
        then read every result and reply already waiting, so that a result that
        arrived in time is never overtaken by ``unavailable``. It stamps the loop's
        turn for the heartbeat thread."""
        self.turned()
        for wake in list(self._wakers.values()):
            wake()
        for sock in (self.results, self.dealer):
            while self.read_some(sock, READ_BATCH) >= READ_BATCH:
                pass

    def read_some(self, sock: zmq.Socket[bytes], limit: int) -> int:
        """Hand waiting frames from ``sock`` to the core until ``limit`` messages are
        handled or none is left; returns how many messages were handled (a frame is
        handled whole)."""
        core = self.core
        assert core is not None
        handle = core.from_peer if sock is self.results else core.from_coordinator
        clock = asyncio.get_running_loop().time
        lock = self._dealer_lock if sock is self.dealer else contextlib.nullcontext()
        handled = 0
        core.begin_batch()
        try:
            while handled < limit:
                try:
                    with lock:
                        frame = sock.recv(_NOBLOCK)
                except zmq.Again:
                    return handled
                handled += handle(frame, clock())
            return handled
        finally:
            core.end_batch()

    async def _readable(self, sock: zmq.Socket[bytes]) -> None:
        """Return once ``sock`` holds a message. Its FD only signals changes since the
        last look at ``EVENTS``, so ``EVENTS`` is checked first and on every wake-up."""
        lock = self._dealer_lock if sock is self.dealer else contextlib.nullcontext()
        with lock:
            if _has_input(sock):
                return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if ready.done():
                return
            with lock:
                waiting = _has_input(sock)
            if waiting:
                ready.set_result(None)

        with lock:
            fd = sock.fileno()
        loop.add_reader(fd, wake)
        self._wakers[sock] = wake
        try:
            wake()  # a message may have come in before the reader was added
            await ready
        finally:
            loop.remove_reader(fd)
            self._wakers.pop(sock, None)


def _has_input(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)


def _can_send(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLOUT)


def _curve_keys(settings: WorkerSettings) -> tuple[curve.KeyPair, bytes] | None:
    """This worker's key pair and the coordinator's public key, when CURVE is on."""
    own, server = settings.backbone.curve_secret_key, settings.backbone.curve_server_key
    if own is None and server is None:
        return None
    if own is None or server is None:
        raise curve.BackboneSecurityError(
            "CURVE needs both --curve-secret-key and --curve-server-key"
        )
    return curve.load_keypair(own), curve.load_public(server)
