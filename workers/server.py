"""The worker's asyncio shell: websockets + ZeroMQ around the pure state machines.

Theory of operation
-------------------
One event loop, so every input is handled to completion before the next one starts:
client frames (one handler task per connection), coordinator replies on the DEALER,
updates and beats on the SUB, and a 100 ms ticker (route deadlines, lagging clients,
coordinator silence, retries). The shell decides nothing itself; it asks
:class:`~workers.connection.Connection`, :class:`~workers.replica.Replica` and
:class:`~workers.routes.RouteTable` and carries out what they return.

Writes: frames caused by a client's own frame are written with ``await ws.send()`` so a
client that floods without reading stalls only its own handler (TCP backpressure).
Frames caused by the backbone (fan-out, auth_ok, direct messages, kicks) are written
synchronously with :func:`websockets.broadcast`; the transport buffer they fill is
bounded by the lag and slow-consumer rules instead. Both paths write in call order.

Fan-out: the shell keeps its clients grouped by what the machine says they need
(:class:`Group`, regrouped after every machine call, before any ``await``), so an update
is one ``broadcast()`` to the ``CURRENT`` group. A client can only be past ``lag_bytes``
once its transport passed the write limit, which is kept at or below ``lag_bytes``
(:func:`write_limit`); websockets then pauses writing, and the machine is asked about those
clients alone (:func:`_watched_connection`), with the same answer it would give if asked
about every client.

Backbone: plain ZeroMQ sockets; a reader task waits for the socket's FD and then handles
up to :data:`READ_BATCH` messages, and sends are non-blocking. (``zmq.asyncio`` costs a
future and several ``EVENTS`` checks per message: a third of a worker's CPU when messaging.)

Bounds: SUB/DEALER high-water marks (loss heals through snapshot resync, see
:mod:`workers.replica`), the replica's update buffer, held frames per connection, the
route table, websockets' ``max_size``/``max_queue``/``write_limit``.

Slow consumers: every frame written without backpressure goes through the machine with
the client's transport backlog (``Client.buffered``), so the backlog stays below about
``lag_bytes`` for lobby traffic and below ``max_queue_bytes`` plus one frame in all;
past that the machine closes with 4005. A close waits at most :data:`CLOSE_TIMEOUT` for
the backlog to drain and the closing handshake, then the TCP connection is aborted, so a
client that never reads again never pins its backlog. ``/healthz`` reports the total
and largest backlog (``buffered``, ``maxBuffered``) and how many clients are lagging.

Admission (per worker, :class:`~workers.admission.Admission`): a new WebSocket is
admitted into the challenge phase only while fewer than ``max_pending_auth`` connections
are there and the ``auth_rate`` bucket has a token. Otherwise it is closed right after
the handshake with 1013 ``try_again_later`` and never gets a challenge. Closing with
1013 was chosen over refusing the upgrade with HTTP 503 (which PROTOCOL.md also allows)
because browsers cannot see an HTTP status of a failed upgrade but do see a close code,
and because the count is then exact: a connection is counted from its handler's start
to its leaving ``CHALLENGED`` (or ending), with nothing in between that could leak a
slot. The refusal costs one handshake and one close frame, no nonce, no signature check,
no coordinator traffic and no lobby fan-out. Refusals are summed in ``/healthz``
(``refused``) and logged at most once a second.

Frame size: websockets enforces ``max_size``; the server starts every connection at the
pre-auth limit and the machine raises it with ``auth_ok`` (:class:`FrameLimit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import logging
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import zmq
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from shared import backbone as bb
from shared import curve, notify, protocol
from shared.protocol import CLOSE_REASONS, CloseCode, RejectReason, SendStatus
from workers.admission import Admission, AdmissionLimits, Admit, RateLimits
from workers.connection import (
    Action,
    Close,
    Connection,
    Emit,
    Fanout,
    Flow,
    FrameLimit,
    Limits,
    Link,
    StartRoute,
    State,
    Write,
    WriteSnapshot,
)
from workers.replica import (
    Announce,
    Effect,
    Forward,
    Replica,
    RequestSnapshot,
    Resynced,
    SyncState,
)
from workers.routes import Room, RouteTable
from workers.settings import WorkerSettings

log = logging.getLogger("workers")
_T = TypeVar("_T")

TICK: Final = 0.1
"""Seconds between sweeps: route deadlines, lagging clients, coordinator silence."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a closing handshake may take before the TCP connection is dropped; short,
so a slow consumer's close and a shutdown stay prompt."""
SHUTDOWN_LINGER_MS: Final = 1000
"""How long the DEALER may keep trying to hand ``Goodbye`` over on shutdown (every
other socket lingers 0: a dead coordinator must never hold a worker up)."""

_ROUTE_STATUS: Final = {
    "delivered": (SendStatus.DELIVERED, None),
    "offline": (SendStatus.OFFLINE, None),
}
_UNAVAILABLE: Final = (SendStatus.REJECTED, RejectReason.UNAVAILABLE)
REFUSAL_LOG_EVERY: Final = 1.0
"""Seconds between log lines summing refused connections (a storm must not flood logs)."""
READ_BATCH: Final = 256
"""Backbone messages handled in a row before clients' frames get a turn."""


class Group(enum.Enum):
    """What the shell must do for a client on a lobby update (from the machine's state)."""

    VERIFIED = "verified"  # waiting for the coordinator link
    ACKED = "acked"  # auth_ok held until the replica catches up
    CURRENT = "current"  # gets the update (broadcast)
    BEHIND = "behind"  # lagging or stale: may resume with a snapshot


def group_of(machine: Connection) -> Group | None:
    if machine.state is State.AUTHENTICATED:
        return Group.CURRENT if machine.flow is Flow.CURRENT else Group.BEHIND
    if machine.state is State.ACKED:
        return Group.ACKED
    return Group.VERIFIED if machine.state is State.VERIFIED else None


def write_limit(lag_bytes: int) -> int:
    """The transport high-water mark: own replies pause the handler above it, and it must
    not exceed ``lag_bytes`` so that fan-out may skip asking about unpaused clients."""
    return min(lag_bytes, max(1024, lag_bytes // 4))


@dataclass(slots=True)
class Client:
    """A live WebSocket and its protocol state."""

    ws: ServerConnection
    machine: Connection
    close_task: asyncio.Task[None] | None = None
    group: Group | None = None

    def buffered(self) -> int:
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()


class Worker:
    """One worker process: accepts clients on the shared port, talks to the coordinator."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.replica = Replica()
        self.routes = RouteTable()
        self.clients: dict[int, Client] = {}
        self._groups: dict[Group, dict[ServerConnection, Client]] = {g: {} for g in Group}
        self._pressured: set[ServerConnection] = set()  # transports past the write limit
        self._limits = Limits(
            auth_timeout=settings.auth_timeout,
            auth_wait=settings.auth_wait,
            lag_bytes=settings.lag_bytes,
            max_queue_bytes=settings.max_queue_bytes,
            pre_auth_frame_bytes=settings.pre_auth_frame_bytes,
            max_frame_bytes=settings.max_frame_bytes,
            rate=RateLimits(
                rate=settings.msg_rate,
                burst=settings.msg_burst,
                flood_rejects=settings.flood_rejects,
                flood_window=settings.flood_window,
            ),
        )
        self.admission = Admission(
            AdmissionLimits(
                max_pending=settings.max_pending_auth,
                auth_rate=settings.auth_rate,
                auth_burst=settings.auth_burst,
            )
        )
        self._refusals_logged = 0
        self._refusals_logged_at = float("-inf")
        self._conn_ids = itertools.count(1)
        self._announced: frozenset[int] = frozenset()
        self._last_seen = float("-inf")  # last message from the coordinator
        self._last_request = 0.0  # last Hello/SnapshotRequest
        self._ready = asyncio.Event()
        self._stopping = False
        self._curve = _curve_keys(settings)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sub = self._socket(zmq.SUB)
        self._dealer = self._socket(zmq.DEALER)
        # Wake-ups of the readers waiting on each socket (see _readable).
        self._wakers: dict[zmq.Socket[bytes], Callable[[], None]] = {}
        self._handlers: dict[type[bb.Message], Callable[[bb.Message], None]] = {
            bb.Welcome: lambda m: self._effects(self.replica.on_welcome(_as(m, bb.Welcome))),
            bb.Reannounce: lambda m: self._effects(self.replica.start()),
            bb.Snapshot: lambda m: self._effects(self.replica.on_snapshot(_as(m, bb.Snapshot))),
            bb.Update: lambda m: self._effects(self.replica.on_update(_as(m, bb.Update))),
            bb.Beat: lambda m: self._effects(self.replica.on_beat(_as(m, bb.Beat))),
            bb.AuthAck: lambda m: self._on_ack(_as(m, bb.AuthAck)),
            bb.Kick: lambda m: self._on_kick(_as(m, bb.Kick)),
            bb.Deliver: lambda m: self._on_deliver(_as(m, bb.Deliver)),
            bb.RouteDone: lambda m: self._on_route_done(_as(m, bb.RouteDone)),
        }

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ lifecycle

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.settings.hwm)
        sock.setsockopt(zmq.RCVHWM, self.settings.hwm)
        if self._curve is not None:
            curve.make_client(sock, *self._curve)
        return sock

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set; returns the process exit code."""
        s = self.settings
        # SUB first: whatever is published from now on reaches us, and the snapshot we
        # ask for next covers everything before (slow-joiner rule).
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(s.updates_endpoint)
        self._dealer.setsockopt(zmq.ROUTING_ID, s.worker_id.encode())
        self._dealer.connect(s.events_endpoint)
        try:
            server = await serve(
                self._serve_client,
                s.host,
                s.port,
                reuse_port=True,
                process_request=self._process_request,
                compression=s.compression,
                max_size=s.pre_auth_frame_bytes,  # raised with auth_ok (FrameLimit)
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                close_timeout=CLOSE_TIMEOUT,
                # Own replies pause the handler above this; fan-out is governed by lag_bytes.
                write_limit=write_limit(s.lag_bytes),
                create_connection=_watched_connection(self._pressured),
            )
        except OSError as exc:
            log.error("worker %s cannot listen on %s:%d: %s", s.worker_id, s.host, s.port, exc)
            self._close_sockets(linger_ms=0)
            return 1
        self._effects(self.replica.start())
        tasks = [
            asyncio.create_task(self._read(self._dealer), name="dealer"),
            asyncio.create_task(self._read(self._sub), name="sub"),
            asyncio.create_task(self._heartbeats(), name="heartbeat"),
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._announce_ready(server), name="ready"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        for task in failed:
            log.error("worker task %s failed", task.get_name(), exc_info=task.exception())
        await self._shutdown(server, [stopper, *tasks])
        return 1 if failed else 0

    async def _announce_ready(self, server: Server) -> None:
        await self._ready.wait()
        host, port = server.sockets[0].getsockname()[:2]
        url = f"ws://{host}:{port}{protocol.WS_PATH}"
        log.info("worker %s ready at %s", self.settings.worker_id, url)
        notify.ready(f"worker {self.settings.worker_id} ready at {url}")
        await asyncio.Event().wait()  # stay pending: only stop or a failure ends run()

    async def _shutdown(self, server: Server, tasks: list[asyncio.Task[Any]]) -> None:
        log.info("worker %s stopping", self.settings.worker_id)
        notify.stopping(f"worker {self.settings.worker_id} stopping")
        self._emit(bb.Goodbye(self.settings.worker_id))
        self._stopping = True  # the coordinator dropped all our sessions at once
        server.close(code=CloseCode.GOING_AWAY, reason=CLOSE_REASONS[CloseCode.GOING_AWAY])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                await server.wait_closed()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_sockets(linger_ms=SHUTDOWN_LINGER_MS)
        log.info("worker %s stopped", self.settings.worker_id)

    def _close_sockets(self, linger_ms: int) -> None:
        self._sub.close(linger=0)
        self._dealer.close(linger=linger_ms)
        self._ctx.term()

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == protocol.HEALTH_PATH:
            return self._health(conn)
        if path != protocol.WS_PATH:
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    def _health(self, conn: ServerConnection) -> Response:
        up = self._link() is Link.UP and not self._stopping
        body = {
            "status": "ok" if up else "unavailable",
            "worker": self.settings.worker_id,
            "sync": self.replica.sync.value,
            "seq": self.replica.seq,
            "clients": len(self.clients),
            **self._pressure(),
        }
        status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
        response = conn.respond(status, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    def _pressure(self) -> dict[str, Any]:
        """Backlog and admission figures for ``/healthz`` (O(clients), on request only)."""
        backlog = [c.buffered() for c in self.clients.values()]
        lagging = sum(
            c.machine.state is State.AUTHENTICATED and c.machine.flow is not Flow.CURRENT
            for c in self.clients.values()
        )
        refused = self.admission.refused
        return {
            "buffered": sum(backlog),
            "maxBuffered": max(backlog, default=0),
            "lagging": lagging,
            "challenged": len(self.admission.pending),
            "refused": {kind.value: refused.get(kind, 0) for kind in (Admit.BUSY, Admit.THROTTLED)},
        }

    # ------------------------------------------------------------------ clients

    async def _serve_client(self, ws: ServerConnection) -> None:
        conn_id = next(self._conn_ids)
        admitted = self.admission.admit(conn_id, self.now)
        if admitted is not Admit.OK:
            log.debug("conn %d refused: %s", conn_id, admitted.value)
            await _close_ws(ws, CloseCode.TRY_AGAIN_LATER, CLOSE_REASONS[CloseCode.TRY_AGAIN_LATER])
            return
        machine = Connection.open(
            conn_id, secrets.token_bytes(protocol.NONCE_BYTES), self.now, self._limits
        )
        client = Client(ws, machine)
        self.clients[conn_id] = client
        log.debug("conn %d opened from %s", conn_id, ws.remote_address)
        try:
            await self._perform_replies(client, machine.greeting())
            while machine.state is not State.CLOSING:
                frame = await self._next_frame(client)
                if frame is None:
                    actions = machine.on_deadline(self.now)
                else:
                    actions = machine.on_frame(frame, self.now, self._link())
                if machine.state is not State.CHALLENGED:
                    self.admission.release(conn_id)
                await self._perform_replies(client, actions)
        except ConnectionClosed as exc:
            log.debug("conn %d closed: %s", conn_id, exc)
        finally:
            self.admission.release(conn_id)
            del self.clients[conn_id]
            self._perform(client, machine.on_transport_closed())
        if client.close_task is not None:
            await client.close_task
        log.debug("conn %d ended in %s", conn_id, [t[2].value for t in machine.trace])

    async def _next_frame(self, client: Client) -> str | bytes | None:
        """The next client frame, or ``None`` when the connection's deadline passed."""
        deadline = client.machine.deadline
        try:
            async with asyncio.timeout_at(deadline):
                return await client.ws.recv()
        except TimeoutError:
            return None

    async def _perform_replies(self, client: Client, actions: list[Action]) -> None:
        """Carry out actions caused by the client's own frame: writes apply backpressure."""
        self._place(client)  # before the first await: fan-out must see the new flow
        for action in actions:
            if isinstance(action, Write | WriteSnapshot):
                await client.ws.send(self._frame_of(action))
            else:
                self._perform(client, [action])

    def _perform(self, client: Client, actions: list[Action]) -> None:
        """Carry out what the machine returned (called after every machine call)."""
        self._place(client)
        for action in actions:
            if isinstance(action, Write | WriteSnapshot):
                broadcast([client.ws], self._frame_of(action))
            elif isinstance(action, Close):
                self._begin_close(client, action)
            elif isinstance(action, Emit):
                self._emit(action.message)
            elif isinstance(action, StartRoute):
                self._start_route(client, action)
            elif isinstance(action, FrameLimit):
                _set_max_size(client.ws, action.max_bytes)

    def _frame_of(self, action: Write | WriteSnapshot) -> str:
        return action.frame if isinstance(action, Write) else self.replica.snapshot_frame()

    def _begin_close(self, client: Client, action: Close) -> None:
        if client.close_task is None:
            log.debug("conn %d closing with %d", client.machine.conn_id, action.code)
            client.close_task = asyncio.create_task(
                _close_ws(client.ws, action.code, action.reason)
            )

    def _each(self, *states: State) -> Iterator[Client]:
        return (c for c in list(self.clients.values()) if c.machine.state in states)

    def _place(self, client: Client) -> None:
        """Move ``client`` to the group its machine's state now calls for."""
        group = group_of(client.machine)
        if group is not client.group:
            if client.group is not None:
                del self._groups[client.group][client.ws]
            if group is not None:
                self._groups[group][client.ws] = client
            client.group = group

    def _in_group(self, group: Group) -> list[Client]:
        return list(self._groups[group].values())

    # ------------------------------------------------------------------ backbone out

    def _emit(self, msg: bb.UpMessage) -> bool:
        """Queue ``msg`` for the coordinator without blocking; ``False`` if dropped."""
        if self._stopping:
            return False
        try:
            self._dealer.send(bb.encode(msg), zmq.DONTWAIT)
        except zmq.Again:  # past SNDHWM: the coordinator is not reading
            log.warning("backbone queue full; dropped %s", msg.TAG)
            return False
        finally:
            # A send may take in pending input without the (edge-triggered) FD firing.
            if (wake := self._wakers.get(self._dealer)) is not None:
                wake()
        return True

    def _start_route(self, client: Client, action: StartRoute) -> None:
        machine = client.machine
        room = self.routes.room_for(machine.conn_id)
        if room is not Room.OK:
            reason = (
                RejectReason.RATE_LIMITED if room is Room.CONN_FULL else RejectReason.UNAVAILABLE
            )
            self._result(client, action.msg_id, (SendStatus.REJECTED, reason))
            return
        assert machine.key is not None
        route = self.routes.open(
            machine.conn_id, action.msg_id, self.now + self.settings.route_timeout
        )
        msg = bb.Route(route, machine.key, action.to, action.msg_id, action.body)
        if not self._emit(msg):
            self.routes.finish(route)
            self._result(client, action.msg_id, _UNAVAILABLE)

    def _result(
        self, client: Client, msg_id: str, outcome: tuple[SendStatus, RejectReason | None]
    ) -> None:
        status, reason = outcome
        self._perform(client, client.machine.on_result(msg_id, status, reason, client.buffered()))

    # ------------------------------------------------------------------ backbone in

    async def _read(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            await self._readable(sock)
            for _ in range(READ_BATCH):
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._dispatch(frame)
            else:
                await asyncio.sleep(0)  # a full batch: let the clients' frames in

    async def _readable(self, sock: zmq.Socket[bytes]) -> None:
        """Return once ``sock`` holds a message. Its FD only signals changes since the
        last look at ``EVENTS``, so ``EVENTS`` is checked first and on every wake-up."""
        if _has_input(sock):
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done() and _has_input(sock):
                ready.set_result(None)

        fd = sock.fileno()
        loop.add_reader(fd, wake)
        self._wakers[sock] = wake
        try:
            wake()  # a message may have come in before the reader was added
            await ready
        finally:
            loop.remove_reader(fd)
            self._wakers.pop(sock, None)

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = bb.decode(frame)
        except bb.BackboneDecodeError as exc:
            log.warning("dropping undecodable backbone frame: %s", exc)
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("dropping unexpected backbone message %s", msg.TAG)
            return
        self._last_seen = self.now
        handler(msg)

    def _on_ack(self, msg: bb.AuthAck) -> None:
        client = self.clients.get(msg.conn)
        if client is not None:
            self._perform(client, client.machine.on_ack(msg.epoch, msg.seq, self.replica))
        self._effects(self.replica.observe_epoch(msg.epoch))

    def _on_kick(self, msg: bb.Kick) -> None:
        client = self.clients.get(msg.conn)
        if client is not None:
            self._perform(client, client.machine.on_kick())

    def _on_deliver(self, msg: bb.Deliver) -> None:
        client = self.clients.get(msg.conn)
        status = SendStatus.OFFLINE
        if client is not None:
            actions, status = client.machine.on_deliver(
                msg.sender, msg.msg_id, msg.body, client.buffered()
            )
            self._perform(client, actions)
        self._emit(bb.RouteResult(msg.origin, msg.route, status.value))

    def _on_route_done(self, msg: bb.RouteDone) -> None:
        pending = self.routes.finish(msg.route)
        if pending is None:
            log.debug("late RouteDone for route %d", msg.route)
            return
        client = self.clients.get(pending.conn)
        if client is not None:
            self._result(client, pending.msg_id, _ROUTE_STATUS.get(msg.status, _UNAVAILABLE))

    # ------------------------------------------------------------------ replica effects

    def _effects(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Announce):
                self._announce()
            elif isinstance(effect, RequestSnapshot):
                self._last_request = self.now
                self._emit(bb.SnapshotRequest())
            elif isinstance(effect, Forward):
                self._fan_out(effect)
            elif isinstance(effect, Resynced):
                self._resynced(effect)

    def _announce(self) -> None:
        sessions = [s for c in self.clients.values() if (s := c.machine.session()) is not None]
        self._announced = frozenset(session[0] for session in sessions)
        self._last_request = self.now
        log.info("announcing %d sessions to the coordinator", len(sessions))
        self._emit(bb.Hello(self.settings.worker_id, sessions))
        self._emit(bb.SnapshotRequest())

    def _fan_out(self, update: Forward) -> None:
        """Encode once, broadcast to current clients; then give lagging clients that
        drained their snapshot, and release held auth_oks."""
        current = self._groups[Group.CURRENT]
        # Unpaused transports hold at most write_limit <= lag_bytes: the machine would
        # answer UPDATE for them, so only paused ones are asked (SKIP makes them LAGGING).
        for ws in list(self._pressured):
            client = current.get(ws)
            if client is not None:
                client.machine.on_update(client.buffered(), self.replica)
                self._place(client)
        broadcast(list(current), update.frame)
        # After the broadcast: these start from a snapshot that already holds this update.
        for client in self._in_group(Group.BEHIND):
            if client.machine.on_update(client.buffered(), self.replica) is Fanout.SNAPSHOT:
                self._perform(client, [WriteSnapshot()])
        for client in self._in_group(Group.ACKED):
            self._perform(client, client.machine.on_replica(self.replica))

    def _resynced(self, effect: Resynced) -> None:
        if effect.previous_epoch != self.replica.epoch:
            log.info("replica synced to epoch %s at seq %d", self.replica.epoch, self.replica.seq)
        else:
            log.info("replica resynced at seq %d after lost updates", self.replica.seq)
        for client in self._each(State.ACKED, State.AUTHENTICATED):
            self._perform(client, client.machine.on_resync(self.replica, self._announced))
        self._sweep_flow()
        self._link_changed()
        self._ready.set()

    # ------------------------------------------------------------------ periodic

    def _link(self) -> Link:
        live = self.replica.sync is SyncState.LIVE
        recent = self.now - self._last_seen <= self.settings.coordinator_timeout
        return Link.UP if live and recent else Link.DOWN

    def _link_changed(self) -> None:
        if self._link() is Link.UP:
            for client in self._in_group(Group.VERIFIED):
                self._perform(client, client.machine.on_link_up())

    def _sweep_flow(self) -> None:
        for client in self._in_group(Group.BEHIND):
            self._perform(client, client.machine.on_sweep(client.buffered(), self.replica))

    async def _heartbeats(self) -> None:
        while True:
            self._emit(bb.Heartbeat(self.settings.worker_id))
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._tick()

    def _tick(self) -> None:
        # Safety net for the edge-triggered ZeroMQ FD: a wake-up it failed to signal
        # costs at most one tick, never a stalled backbone.
        for wake in list(self._wakers.values()):
            wake()
        now = self.now
        for pending in self.routes.expire(now):
            client = self.clients.get(pending.conn)
            if client is not None:
                self._result(client, pending.msg_id, _UNAVAILABLE)
        silent = now - self._last_seen > self.settings.coordinator_timeout
        if self.replica.sync is SyncState.LIVE:
            if silent:  # it may have dropped our sessions, or restarted: announce again
                log.warning("coordinator silent for %.1fs", self.settings.coordinator_timeout)
                self._effects(self.replica.start())
        elif now - self._last_request > self.settings.coordinator_timeout:
            self._last_request = now
            self._effects(self.replica.retry())
        self._sweep_flow()
        self._link_changed()
        self._log_refusals(now)

    def _log_refusals(self, now: float) -> None:
        total = sum(self.admission.refused.values())
        if total != self._refusals_logged and now - self._refusals_logged_at >= REFUSAL_LOG_EVERY:
            log.info(
                "refused %d connections with 1013 since the last report (%d challenged now)",
                total - self._refusals_logged,
                len(self.admission.pending),
            )
            self._refusals_logged, self._refusals_logged_at = total, now


async def _close_ws(ws: ServerConnection, code: int, reason: str) -> None:
    """Close within :data:`CLOSE_TIMEOUT` (plus a little): ``ws.close`` first waits for
    the backlog to drain, which a client that stopped reading never lets happen."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT + 0.5):
            await ws.close(code, reason)
    except TimeoutError:
        log.debug("close %d timed out; aborting the TCP connection", code)
        if ws.transport is not None:
            ws.transport.abort()


def _watched_connection(pressured: set[ServerConnection]) -> type[ServerConnection]:
    """A connection class that keeps itself in ``pressured`` while websockets has paused
    writing to it (transport buffer past the high-water mark, until it drains)."""

    class Watched(ServerConnection):
        def pause_writing(self) -> None:
            super().pause_writing()
            pressured.add(self)

        def resume_writing(self) -> None:
            super().resume_writing()
            pressured.discard(self)

        def connection_lost(self, exc: Exception | None) -> None:
            pressured.discard(self)
            super().connection_lost(exc)

    return Watched


def _has_input(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN)


def _set_max_size(ws: ServerConnection, max_bytes: int) -> None:
    """Change the largest frame websockets accepts from now on (read per frame)."""
    proto: Any = ws.protocol
    if hasattr(proto, "max_message_size"):  # websockets >= 15 (max_size may be a pair)
        proto.max_message_size = max_bytes
    else:
        proto.max_size = max_bytes


def _curve_keys(settings: WorkerSettings) -> tuple[curve.KeyPair, bytes] | None:
    """This worker's key pair and the coordinator's public key, when CURVE is on."""
    own, server = settings.curve_secret_key, settings.curve_server_key
    if own is None and server is None:
        return None
    if own is None or server is None:
        raise curve.BackboneSecurityError(
            "CURVE needs both --curve-secret-key and --curve-server-key"
        )
    return curve.load_keypair(own), curve.load_public(server)


def _as(msg: bb.Message, cls: type[_T]) -> _T:
    assert isinstance(msg, cls)
    return msg


async def main(settings: WorkerSettings) -> int:
    """Run a worker until SIGTERM/SIGINT; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        worker = Worker(settings)
    except curve.BackboneSecurityError as exc:
        log.error("cannot start the backbone: %s", exc)
        return 2
    return await worker.run(stop)
