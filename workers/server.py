"""The worker's asyncio shell: websockets + ZeroMQ around the pure state machines.

Theory of operation
-------------------
One event loop, so every input is handled to completion before the next one starts:
client frames (one handler task per connection), coordinator replies on the DEALER,
updates and beats on the SUB, results from other workers on the results PULL socket,
and a 100 ms ticker (route deadlines, lagging and stalled clients, coordinator silence,
repairs). The shell decides nothing itself; it asks
:class:`~workers.connection.Connection`, :class:`~workers.replica.Replica`,
:class:`~workers.routes.RouteTable` and :class:`~workers.admission.Admission` and
carries out what they return.

Writes: every frame is written synchronously (:func:`websockets.broadcast`, or for
lobby updates and snapshots the bytes of a frame built once, :mod:`workers.frames`), in
call order, never awaited: a client's backlog is bounded by the machine's
rules (lobby updates skipped past ``lag_bytes``, direct messages refused to their
senders past ``max_queue_bytes``, its own replies bounded by its message rate, a stalled
client closed after ``stall_timeout``), so no write needs to wait, and no client's
backlog, whoever filled it, delays the reading of its own frames.

Fan-out: the shell keeps its clients grouped by what the machine says they need
(:class:`Group`, regrouped after every machine call), so an update is one frame,
built once, written to the ``CURRENT`` group. A client can only be past ``lag_bytes``
once its transport passed the write limit, which is kept at or below ``lag_bytes``
(:func:`write_limit`); websockets then pauses writing, and the machine is asked about
those clients alone (:func:`watched_connection`), with the same answer it would give if
asked about every client. The same *pressured* set is sampled each tick for reading
progress: the bytes the peer has acknowledged (``TCP_INFO``), so a client whose backlog
does not move for ``stall_timeout`` is closed with 4005.

Backbone: plain ZeroMQ sockets; a reader task waits for a socket's FD and then handles
up to :data:`READ_BATCH` messages, and sends are non-blocking. (``zmq.asyncio`` costs a
future and several ``EVENTS`` checks per message: a third of a worker's CPU when
messaging.) What one turn of the loop sends to the coordinator, or to one other worker's
results endpoint, goes out at the end of the turn as one frame
(:class:`~shared.backbone.Outbox`, bounded), so a busy worker pays ZeroMQ once per peer
per turn, not once per message. A message that matters and cannot be queued
(``Authed``, ``Closed``, ``Hello``) is counted, and the worker re-registers (``Hello``,
the whole truth) once it can; a ``Route`` that cannot be queued is answered
``unavailable`` at once.

Direct messages: a ``send`` to a session this worker holds and the coordinator
acknowledged (``ACKED`` or ``AUTHENTICATED``; the last one acknowledged, if the key has
several here) is delivered here at once (:meth:`Worker._deliver_here`): the same room
check, the same recipient bound (``rate_limited``), the same frames and results as the
long way, which would reach this very connection. The coordinator orders sessions, and
a newer session of the key elsewhere may already be acknowledged while this one's kick
is on its way: the message then goes to the key's older connection, which proved the
key, so ``delivered`` is still the truth (and the coordinator's routing has the same
window, a route applied just before the replacement). Any other ``send`` becomes a
``Route`` to the coordinator, carrying its
deadline on the coordinator's clock (:class:`~workers.routes.CoordinatorClock`). The
recipient's worker drops a ``Deliver`` past that deadline, and otherwise writes it (or
refuses it, or finds the connection gone) and answers the origin worker directly on its
results endpoint, never through the coordinator. It delivers only when that answer can
be queued. The origin answers ``unavailable`` at its own, later deadline, after reading
every result already waiting (the ticker drains the sockets first), so ``rejected`` is
never followed by a delivery and ``delivered`` always arrived.

Cut off: a worker whose coordinator has been unreachable for ``cutoff_grace`` closes
its clients with 1013 and refuses new ones (HTTP 503 before the handshake, see
Admission) until it is back; ``/healthz`` answers 503 as soon as the coordinator is
unreachable.

Admission (per worker, :class:`~workers.admission.Admission`): a new WebSocket is
admitted into the challenge phase only while the challenge phase has room and the auth
window (auths in flight, sized by the event loop's lag: the ticker's lateness, fed to
the door once a tick) has room for its source. The upgrade request is asked first
(:meth:`~workers.admission.Admission.check`): a refusal there is an HTTP 503 with
``Retry-After`` and costs no handshake, no connection handler and no close handshake,
which is what lets a storm be refused cheaply. A connection refused after all when its
handler starts (the room went to another in between), or cut off then, is closed right
after the handshake with 1013 ``try_again_later`` and never gets a challenge.
Refusals are summed in ``/healthz`` (``refused``) and logged at most once a second.

``/healthz`` answers GET and HEAD (anything else: 405) from figures the ticker keeps, so
a request costs the same however many clients are connected.

Idle clients: most clients are idle most of the time, so what one holds between frames
is what a worker's memory is made of. The connection class (:func:`watched_connection`)
keeps no empty deques (:class:`LazyDeque`) and no keepalive task between pings (a timer
starts each round); the handshake's headers are dropped once admission has read the
source (:func:`forget_handshake`); an authenticated client's ``recv`` has no timeout
around it. websockets' bounds (``max_queue``, the write limit) are unchanged.

Metrics (:mod:`workers.stats`): what the machines' outputs and the replica's outputs
say happened is recorded as the shell carries them out; a fan-out is recorded once per
broadcast, and the connection counts once per tick.
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
import time
from collections import Counter, OrderedDict
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
from shared import curve, endpoints, logs, notify, protocol, timings
from shared.options import SettingsError
from shared.protocol import CLOSE_REASONS, CloseCode, RejectReason, SendStatus
from workers import pages, stats
from workers.admission import Admission, Admit
from workers.api import ApiTokenError, BackendApi, load_token
from workers.connection import Connection, Flow, Link, State
from workers.frames import SharedFrame
from workers.outputs import Close, Emit, FrameLimits, Output, StartRoute, Write, WriteSnapshot
from workers.replica import (
    Announce,
    Forward,
    Replica,
    RequestSnapshot,
    Resynced,
    SyncState,
)
from workers.replica import Output as ReplicaOutput
from workers.routes import CoordinatorClock, Room, RouteTable
from workers.settings import TlsError, WorkerSettings
from workers.sources import client_address, parse_trusted, source_key
from workers.wsinternals import (
    acked_bytes,
    forget_handshake,
    limit_frames,
    watched_connection,
    write_all,
    write_limit,
)

log = logging.getLogger("workers")
_T = TypeVar("_T")

TICK: Final = 0.1
"""Seconds between sweeps: route deadlines, lagging and stalled clients, coordinator
silence, repairs."""
API_OPEN_TIMEOUT: Final = 5.0
"""Seconds an API connection may take to send its request (a caller on the backend
network sends it at once)."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a closing handshake may take before the TCP connection is dropped; short,
so a slow consumer's close and a shutdown stay prompt."""
SHUTDOWN_LINGER_MS: Final = 1000
"""How long the DEALER may keep trying to hand ``Goodbye`` over on shutdown (every
other socket lingers 0: a dead coordinator must never hold a worker up)."""
LOG_EVERY: Final = 1.0
"""Seconds between log lines summing refusals and drops (a storm must not flood logs)."""
LISTEN_BACKLOG: Final = 1024
"""Connections the kernel may hold completed for each worker before it accepts them
(capped by ``net.core.somaxconn``). websockets' default of 100 overflows in a reconnect
storm, and a dropped SYN costs the client a retransmit timer of a second or more, which
is longer than being refused and retrying."""
RETRY_AFTER: Final = 1
"""``Retry-After`` seconds of an upgrade refused at capacity: a hint only, as clients
back off with jitter on their own (a window frees within a round trip or two)."""
READ_BATCH: Final = 256
"""Backbone messages handled in a row before clients' frames get a turn."""
COALESCE_BYTES: Final = 64 * 1024
"""Lobby updates read in one batch (they queued up while the worker was busy) are
written to each client together, one system call for all of them, up to this many
bytes of frames: what a write past a client's ``lag_bytes`` check may add to its
backlog, small beside the default ``lag_bytes``."""
MAX_PEERS: Final = 64
"""Result sockets to other workers kept open (the least recently used is closed)."""

_NOBLOCK: Final = int(zmq.NOBLOCK)  # (flag arithmetic on pyzmq's enums is slow)
_ROUTE_STATUS: Final = {
    "delivered": (SendStatus.DELIVERED, None),
    "offline": (SendStatus.OFFLINE, None),
    "rate_limited": (SendStatus.REJECTED, RejectReason.RATE_LIMITED),
}
_UNAVAILABLE: Final = (SendStatus.REJECTED, RejectReason.UNAVAILABLE)
_SETTLED: Final = frozenset({State.ACKED, State.AUTHENTICATED, State.CLOSING})
"""States in which a connection is out of the auth window (acknowledged, or done)."""
_REPAIRED_BY_HELLO: Final = (bb.Authed, bb.Closed, bb.Hello)


class Group(enum.Enum):
    """What the shell must do for a client on a lobby update (from the machine's state)."""

    VERIFIED = "verified"  # waiting for the coordinator link
    AUTHENTICATING = "authenticating"  # Authed sent, waiting for the ack (counted only)
    ACKED = "acked"  # auth_ok held until the replica catches up
    CURRENT = "current"  # gets the update (broadcast)
    BEHIND = "behind"  # lagging or stale: may resume with a snapshot


_ACKNOWLEDGED: Final = frozenset({Group.ACKED, Group.CURRENT, Group.BEHIND})
"""The groups of sessions the coordinator acknowledged (and has not kicked)."""


def group_of(machine: Connection) -> Group | None:
    if machine.state is State.AUTHENTICATED:
        return Group.CURRENT if machine.flow is Flow.CURRENT else Group.BEHIND
    if machine.state is State.ACKED:
        return Group.ACKED
    if machine.state is State.AUTHENTICATING:
        return Group.AUTHENTICATING
    return Group.VERIFIED if machine.state is State.VERIFIED else None


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
        """Check the backbone's safety and open its sockets; raises
        :class:`~shared.curve.BackboneSecurityError`,
        :class:`~shared.endpoints.UnsafeDirectory`, :class:`~shared.endpoints.EndpointInUse`
        or :class:`~shared.options.SettingsError` for a backbone it must not use."""
        self.settings = settings
        self.replica = Replica()
        self.routes = RouteTable()
        self.clock = CoordinatorClock()
        self.clients: dict[int, Client] = {}
        # Acknowledged sessions here, by key (the last one acknowledged): a send to one
        # of them is delivered here, without the coordinator (see _deliver_here).
        self._sessions: dict[str, Client] = {}
        self._by_ws: dict[ServerConnection, Client] = {}
        self._groups: dict[Group, dict[ServerConnection, Client]] = {g: {} for g in Group}
        self._pressured: set[ServerConnection] = set()  # transports past the write limit
        self._limits = settings.limits
        self.admission = Admission(settings.admission)
        self._trusted = parse_trusted(settings.network.trusted_proxies)
        self._tls = settings.network.tls_context()
        self._pages = pages.load()
        self._snapshot: SharedFrame | None = None
        # Updates applied but not yet written: held to the end of the read batch
        # (see _effects), never across anything else that reads the replica.
        self._unwritten: list[Forward] = []
        self._unwritten_bytes = 0
        self._reading = False
        api = settings.api
        self._api = (
            BackendApi(load_token(api.api_token_file))
            if api.enabled and api.api_token_file is not None
            else None
        )
        self.counters: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()
        self._logged_at = float("-inf")
        self._conn_ids = itertools.count(1)
        self._announced: frozenset[int] = frozenset()
        self._last_seen = float("-inf")  # last message from the coordinator
        self._last_request = 0.0  # last Hello/SnapshotRequest
        self._repair = False  # a message that matters was lost: re-register
        self._down_since: float | None = None
        self._cut_off = False
        self._backlog = {"buffered": 0, "maxBuffered": 0}
        self._ready = asyncio.Event()
        self._stopping = False

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
        self._lock = endpoints.Lock.take(self.results_endpoint, f"worker {self.worker_id}")
        self._results_key = "" if self._curve is None else self._curve[0].public.decode()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sub = self._socket(zmq.SUB)
        self._dealer = self._socket(zmq.DEALER)
        self._results = self._socket(zmq.PULL, server=True)
        self._peers: OrderedDict[str, zmq.Socket[bytes]] = OrderedDict()
        # What this turn of the loop sends: one frame each to the coordinator and to
        # each other worker's results endpoint, at the end of the turn (see _flush).
        self._up = bb.Outbox()
        self._results_out: dict[zmq.Socket[bytes], bb.Outbox] = {}
        self._flush_due = False
        self._closed = False
        # Wake-ups of the readers waiting on each socket (see _readable).
        self._wakers: dict[zmq.Socket[bytes], Callable[[], None]] = {}
        self._handlers: dict[type[bb.Message], Callable[[bb.Message], None]] = {
            bb.Welcome: lambda m: self._effects(self.replica.on_welcome(_as(m, bb.Welcome))),
            bb.Reannounce: lambda m: self._effects(self.replica.start()),
            bb.Snapshot: lambda m: self._effects(self.replica.on_snapshot(_as(m, bb.Snapshot))),
            bb.Update: lambda m: self._effects(self.replica.on_update(_as(m, bb.Update))),
            bb.Beat: lambda m: self._on_beat(_as(m, bb.Beat)),
            bb.AuthAck: lambda m: self._on_ack(_as(m, bb.AuthAck)),
            bb.Kick: lambda m: self._on_kick(_as(m, bb.Kick)),
            bb.Deliver: lambda m: self._on_deliver(_as(m, bb.Deliver)),
            bb.RouteDone: lambda m: self._on_route_done(_as(m, bb.RouteDone)),
        }

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ lifecycle

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

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set; returns the process exit code."""
        s, net, ends = self.settings, self.settings.network, self.settings.backbone_endpoints
        # SUB first: whatever is published from now on reaches us, and the snapshot we
        # ask for next covers everything before (slow-joiner rule).
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(ends.updates)
        self._dealer.setsockopt(zmq.ROUTING_ID, s.worker_id.encode())
        self._dealer.connect(ends.events)
        try:
            self._results.bind(self.results_endpoint)
            # The address actually bound: a port of * (the system's pick) becomes a number.
            self.results_endpoint = self._results.getsockopt_string(zmq.LAST_ENDPOINT)
            server = await serve(
                self._serve_client,
                net.host,
                net.port,
                reuse_port=True,
                process_request=self._process_request,
                compression=None if net.compression == "none" else net.compression,
                ssl=self._tls,
                max_size=s.limits.pre_auth_frame_bytes,  # see FrameLimits
                ping_interval=net.ping_interval,
                ping_timeout=net.ping_timeout,
                close_timeout=CLOSE_TIMEOUT,
                write_limit=write_limit(s.limits.lag_bytes),
                create_connection=watched_connection(self._pressured),
                backlog=LISTEN_BACKLOG,
            )
        except (OSError, zmq.ZMQError) as exc:
            log.error(
                "worker %s cannot listen on %s:%d: %s",
                s.worker_id,
                net.host,
                net.port,
                exc,
                extra=logs.event("listen_failed", host=net.host, port=net.port, error=str(exc)),
            )
            self._close_sockets(linger_ms=0)
            return 1
        servers = [server]
        if self._api is not None:
            api = s.api
            host = api.api_host or net.host
            try:
                servers.append(
                    await serve(
                        _never_upgraded,
                        host,
                        api.api_port,
                        reuse_port=True,
                        process_request=self._api_request,
                        ssl=self._tls,
                        compression=None,
                        open_timeout=API_OPEN_TIMEOUT,
                    )
                )
            except OSError as exc:
                log.error(
                    "worker %s cannot serve the API on %s:%s: %s",
                    s.worker_id,
                    host,
                    api.api_port,
                    exc,
                    extra=logs.event(
                        "api_listen_failed", host=host, port=api.api_port, error=str(exc)
                    ),
                )
                server.close()
                await server.wait_closed()
                self._close_sockets(linger_ms=0)
                return 1
        stats.started()
        self._effects(self.replica.start())
        tasks = [
            asyncio.create_task(self._read(self._dealer), name="dealer"),
            asyncio.create_task(self._read(self._sub), name="sub"),
            asyncio.create_task(self._read(self._results), name="results"),
            asyncio.create_task(self._heartbeats(), name="heartbeat"),
            asyncio.create_task(self._ticker(), name="ticker"),
            asyncio.create_task(self._announce_ready(server), name="ready"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        for task in failed:
            log.error(
                "worker task %s failed",
                task.get_name(),
                exc_info=task.exception(),
                extra=logs.event("task_failed", task=task.get_name()),
            )
        await self._shutdown(servers, [stopper, *tasks])
        return 1 if failed else 0

    async def _announce_ready(self, server: Server) -> None:
        await self._ready.wait()
        host, port = server.sockets[0].getsockname()[:2]
        url = f"{'wss' if self._tls else 'ws'}://{host}:{port}{protocol.WS_PATH}"
        log.info(
            "worker %s ready at %s", self.worker_id, url, extra=logs.event("worker_ready", url=url)
        )
        notify.ready(f"worker {self.worker_id} ready at {url}")
        await asyncio.Event().wait()  # stay pending: only stop or a failure ends run()

    async def _shutdown(self, servers: list[Server], tasks: list[asyncio.Task[Any]]) -> None:
        log.info("worker %s stopping", self.worker_id, extra=logs.event("worker_stopping"))
        notify.stopping(f"worker {self.worker_id} stopping")
        self._emit(bb.Goodbye(self.worker_id))
        self._flush()
        self._stopping = True  # the coordinator dropped all our sessions at once
        for server in servers:
            server.close(code=CloseCode.GOING_AWAY, reason=CLOSE_REASONS[CloseCode.GOING_AWAY])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                await asyncio.gather(*(server.wait_closed() for server in servers))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_sockets(linger_ms=SHUTDOWN_LINGER_MS)
        log.info("worker %s stopped", self.worker_id, extra=logs.event("worker_stopped"))

    def _close_sockets(self, linger_ms: int) -> None:
        self._closed = True
        self._sub.close(linger=0)
        self._results.close(linger=0)
        for peer in self._peers.values():
            peer.close(linger=0)
        self._dealer.close(linger=linger_ms)
        self._ctx.term()
        self._lock.release(remove=True)  # the results socket is named after this worker

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == protocol.WS_PATH:
            if request.method != "GET":
                return _not_allowed(conn, "GET")
            return self._door(conn, request)
        page = self._pages.get(path)
        if path != protocol.HEALTH_PATH and page is None:
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.method not in ("GET", "HEAD"):
            return _not_allowed(conn, "GET, HEAD")
        head = request.method == "HEAD"
        if page is None:
            return self._health(conn, head=head)
        return _page(conn, page, head=head)

    def _door(self, conn: ServerConnection, request: Request) -> Response | None:
        """Refuse an upgrade the door would refuse, before the handshake: HTTP 503 with
        ``Retry-After``, which clients treat as 1013 (see docs/PROTOCOL.md). ``None``
        goes on with the handshake; the handler then admits for real."""
        if self._cut_off and self._link() is Link.DOWN:
            stats.refused_cut_off()
            reason = "cut_off"
        else:
            verdict = self.admission.check(self._source_of(conn.remote_address, request))
            if verdict is Admit.OK:
                return None
            stats.refused(verdict)
            reason = verdict.value
        log.debug(
            "upgrade refused: %s",
            reason,
            extra=logs.event("conn_refused", reason=reason, before_handshake=True),
        )
        response = conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "try again later\n")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    def _api_request(self, conn: ServerConnection, request: Request) -> Response:
        """The backend API (:mod:`workers.api` decides; this only carries it out)."""
        assert self._api is not None
        given = request.headers.get_all("Authorization")
        answer = self._api.answer(
            request.method,
            urlsplit(request.path).path,
            given[0] if len(given) == 1 else None,
            self.replica,
            reachable=self._link() is Link.UP and not self._stopping,
        )
        stats.api_answered(answer.status)
        response = conn.respond(answer.status, "")
        headers = response.headers
        del headers["Content-Type"], headers["Content-Length"]
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(answer.body))
        headers["Cache-Control"] = "no-store"
        for name, value in answer.headers:
            headers[name] = value
        response.body = answer.body
        return response

    def _health(self, conn: ServerConnection, *, head: bool) -> Response:
        """O(1): counters, and the backlog figures the ticker keeps."""
        up = self._link() is Link.UP and not self._stopping
        refused = self.admission.refused
        body = {
            "status": "ok" if up else "unavailable",
            "worker": self.worker_id,
            "sync": self.replica.sync.value,
            "seq": self.replica.seq,
            "clients": len(self.clients),
            **self._backlog,
            "lagging": len(self._groups[Group.BEHIND]),
            "challenged": self.admission.pending,
            "inFlight": self.admission.in_flight,
            "authWindow": int(self.admission.window),
            "connections": self.admission.connections,
            "refused": {
                kind.value: refused.get(kind, 0)
                for kind in (Admit.FULL, Admit.BUSY, Admit.THROTTLED)
            },
            "evicted": self.admission.evicted,
            "cutOff": self._cut_off,
            "dropped": dict(self.counters),
        }
        status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
        response = conn.respond(status, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        if head:
            response.body = b""  # Content-Length stays that of the GET answer
        return response

    def _measure_backlog(self) -> None:
        """The backlog figures of ``/healthz``, once a tick: O(pressured clients), as
        only transports past their write limit hold more than a few KiB."""
        backlog = [t.get_write_buffer_size() for ws in self._pressured if (t := ws.transport)]
        self._backlog = {"buffered": sum(backlog), "maxBuffered": max(backlog, default=0)}

    # ------------------------------------------------------------------ clients

    async def _serve_client(self, ws: ServerConnection) -> None:
        conn_id = next(self._conn_ids)
        if self._cut_off and self._link() is Link.DOWN:
            log.debug(
                "conn %d refused: cut off from the coordinator",
                conn_id,
                extra=logs.event("conn_refused", conn=conn_id, reason="cut_off"),
            )
            stats.refused_cut_off()
            await _close_ws(ws, CloseCode.TRY_AGAIN_LATER, CLOSE_REASONS[CloseCode.TRY_AGAIN_LATER])
            stats.closed(ws)
            return
        decision = self.admission.admit(conn_id, self._source_of(ws.remote_address, ws.request))
        stats.evicted(len(decision.evict))
        for evicted in decision.evict:  # challenge-phase slots of a heavier source
            if (victim := self.clients.get(evicted)) is not None:
                self._perform(victim, victim.machine.on_evicted())
        forget_handshake(ws)  # the source is known: the headers are not needed again
        if not decision.admitted:
            log.debug(
                "conn %d refused: %s",
                conn_id,
                decision.verdict.value,
                extra=logs.event("conn_refused", conn=conn_id, reason=decision.verdict.value),
            )
            stats.refused(decision.verdict)
            await _close_ws(ws, CloseCode.TRY_AGAIN_LATER, CLOSE_REASONS[CloseCode.TRY_AGAIN_LATER])
            stats.closed(ws)
            return
        nonce = secrets.token_bytes(protocol.NONCE_BYTES)
        machine = Connection.open(conn_id, nonce, self.now, self._limits, stats.timed_verify)
        client = Client(ws, machine)
        self.clients[conn_id] = client
        self._by_ws[ws] = client
        log.debug(
            "conn %d opened from %s",
            conn_id,
            ws.remote_address,
            extra=logs.event("conn_opened", conn=conn_id, peer=str(ws.remote_address)),
        )
        try:
            self._perform(client, machine.greeting())
            while machine.state is not State.CLOSING:
                frame = await self._next_frame(client)
                if frame is None:
                    actions = machine.on_deadline(self.now)
                else:
                    actions = machine.on_frame(
                        frame, self.now, self._link(), self.replica, client.buffered()
                    )
                if machine.state is not State.CHALLENGED:
                    self.admission.authenticated(conn_id)
                self._perform(client, actions)
        except ConnectionClosed as exc:
            close = exc.rcvd or exc.sent
            code = None if close is None else close.code
            log.debug(
                "conn %d closed: %s",
                conn_id,
                exc,
                extra=logs.event("conn_closed", conn=conn_id, code=code),
            )
        finally:
            self.admission.closed(conn_id)
            del self.clients[conn_id]
            del self._by_ws[ws]
            self._perform(client, machine.on_transport_closed())
        if client.close_task is not None:
            await client.close_task
        stats.closed(ws)
        states = [t[2].value for t in machine.trace]
        log.debug(
            "conn %d ended in %s",
            conn_id,
            states,
            extra=logs.event("conn_ended", conn=conn_id, states=states),
        )

    def _source_of(self, peer: Any, request: Request | None) -> str:
        """The admission source: the client's address (from a trusted proxy's header
        when the peer is one), IPv6 by /64."""
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if self._trusted and request is not None:
            address = client_address(address, request.headers, self._trusted)
        return source_key(address or "")

    async def _next_frame(self, client: Client) -> str | bytes | None:
        """The next client frame, or ``None`` when the connection's deadline passed."""
        deadline = client.machine.deadline
        if deadline is None:  # an online client: no timeout to arm for every frame
            return await client.ws.recv()
        try:
            async with asyncio.timeout_at(deadline):
                return await client.ws.recv()
        except TimeoutError:
            return None

    def _perform(self, client: Client, actions: list[Output]) -> None:
        """Carry out what the machine returned (called after every machine call)."""
        self._place(client)
        if client.machine.state in _SETTLED:  # out of the auth window (idempotent)
            self.admission.settled(client.machine.conn_id)
        for action in actions:
            if isinstance(action, Write):
                broadcast([client.ws], action.frame)
                stats.written(action)
            elif isinstance(action, WriteSnapshot):
                write_all((client.ws,), (self._snapshot_frame(),))
                stats.written(action)
            elif isinstance(action, Close):
                self._begin_close(client, action)
                if action.outcome is not None:
                    stats.auth_ended(action.outcome)
            elif isinstance(action, Emit):
                self._emit(action.message)
            elif isinstance(action, StartRoute):
                self._start_route(client, action)
            elif isinstance(action, FrameLimits):
                limit_frames(client.ws, action)

    def _snapshot_frame(self) -> SharedFrame:
        """The current state's ``lobby_snapshot``, framed once however many clients
        get it (a mass join sends the same one to every joiner of an update)."""
        text = self.replica.snapshot_frame()  # the same str until the state changes
        if self._snapshot is None or self._snapshot.text is not text:
            self._snapshot = SharedFrame(text)
        return self._snapshot

    def _begin_close(self, client: Client, action: Close) -> None:
        if client.close_task is None:
            conn = client.machine.conn_id
            log.debug(
                "conn %d closing with %d",
                conn,
                action.code,
                extra=logs.event("conn_closing", conn=conn, code=action.code, reason=action.reason),
            )
            client.close_task = asyncio.create_task(
                _close_ws(client.ws, action.code, action.reason)
            )

    def _each(self, *states: State) -> Iterator[Client]:
        return (c for c in list(self.clients.values()) if c.machine.state in states)

    def _place(self, client: Client) -> None:
        """Move ``client`` to the group its machine's state now calls for (and in or out
        of the acknowledged sessions)."""
        group = group_of(client.machine)
        if group is not client.group:
            was = client.group in _ACKNOWLEDGED
            if client.group is not None:
                del self._groups[client.group][client.ws]
            if group is not None:
                self._groups[group][client.ws] = client
            client.group = group
            if (group in _ACKNOWLEDGED) is not was:
                self._acknowledged(client, now=not was)

    def _acknowledged(self, client: Client, *, now: bool) -> None:
        key = client.machine.key
        assert key is not None  # acknowledged sessions have a key
        if now:
            self._sessions[key] = client
        elif self._sessions.get(key) is client:
            del self._sessions[key]

    def _in_group(self, group: Group) -> list[Client]:
        return list(self._groups[group].values())

    # ------------------------------------------------------------------ backbone out

    def _emit(self, msg: bb.UpMessage) -> bool:
        """Queue ``msg`` for the coordinator: it goes out with everything else this turn
        of the loop sends there, in one frame (:meth:`_flush`). ``False`` if refused at
        once (stopping); a frame that cannot be queued is accounted for message by
        message (:meth:`_lost`)."""
        if self._stopping:
            return False
        for sent in self._up.add(msg):
            self._send_up(sent)
        self._flush_soon()
        return True

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
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
            self._dealer.send(frame, _NOBLOCK)
        except zmq.Again:  # past SNDHWM: the coordinator is not reading
            for msg in messages:
                self._lost(msg)
        finally:
            # A send may take in pending input without the (edge-triggered) FD firing.
            if (wake := self._wakers.get(self._dealer)) is not None:
                wake()

    def _lost(self, msg: bb.Message) -> None:
        """``msg`` could not be queued for the coordinator: count it, and repair what it
        leaves wrong (a message that matters: re-register; a route: ``unavailable``)."""
        self.counters[msg.TAG] += 1
        stats.dropped(msg.TAG)
        if isinstance(msg, _REPAIRED_BY_HELLO):
            if not self._repair:
                log.warning(
                    "lost %s to the coordinator; will re-register",
                    msg.TAG,
                    extra=logs.event("event_lost", kind=msg.TAG),
                )
            self._repair = True
        elif isinstance(msg, bb.Route):
            pending = self.routes.finish(msg.route)
            if pending is not None:
                stats.routed(time.monotonic() - pending.opened, SendStatus.REJECTED)
                client = self.clients.get(pending.conn)
                if client is not None:
                    self._result(client, pending.msg_id, _UNAVAILABLE)

    def _send_result(self, sock: zmq.Socket[bytes], sent: bb.Sent) -> None:
        frame, messages = sent
        try:
            sock.send(frame, _NOBLOCK)
        except zmq.Again:  # cannot happen: there was room when the first was added
            self.counters["results"] += len(messages)
            for _ in messages:
                stats.dropped(bb.RouteDone.TAG)

    def _start_route(self, client: Client, action: StartRoute) -> None:
        machine = client.machine
        size = len(action.body)
        room = self.routes.room_for(machine.conn_id, size)
        if room is not Room.OK:
            reason = (
                RejectReason.RATE_LIMITED if room is Room.CONN_FULL else RejectReason.UNAVAILABLE
            )
            self._result(client, action.msg_id, (SendStatus.REJECTED, reason))
            return
        assert machine.key is not None
        recipient = self._sessions.get(action.to)
        if recipient is not None and not self._stopping:
            self._deliver_here(client, recipient, action)
            return
        timeout = self.settings.timing.route_timeout
        due, opened = self.now + timeout, time.monotonic()  # (uvloop's time is in ms)
        route = self.routes.open(machine.conn_id, action.msg_id, due, size, opened=opened)
        deadline = self.clock.now(time.time()) + timings.route_ttl(timeout)
        msg = bb.Route(route, machine.key, action.to, action.msg_id, action.body, deadline)
        if not self._emit(msg):  # stopping: nothing goes out any more
            self._lost(msg)

    def _deliver_here(self, client: Client, recipient: Client, action: StartRoute) -> None:
        """Deliver a send to a session acknowledged on this worker, at once: what the
        recipient's machine decides (written, held for ``auth_ok``, or past its bound:
        ``rate_limited``) is the result, exactly as it would be by way of the
        coordinator, which would route it to this very connection."""
        sender = client.machine.key
        assert sender is not None
        actions, delivery = recipient.machine.on_deliver(
            sender, action.msg_id, action.body, recipient.buffered()
        )
        self._perform(recipient, actions)
        outcome = _ROUTE_STATUS[delivery.value]
        stats.routed(0.0, outcome[0])
        self._result(client, action.msg_id, outcome)

    def _result(
        self, client: Client, msg_id: str, outcome: tuple[SendStatus, RejectReason | None]
    ) -> None:
        status, reason = outcome
        self._perform(client, client.machine.on_result(msg_id, status, reason))

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
            log.warning(
                "cannot reach worker results endpoint %s: %s",
                endpoint,
                exc,
                extra=logs.event("peer_unreachable", endpoint=endpoint, error=str(exc)),
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

    # ------------------------------------------------------------------ backbone in

    async def _read(self, sock: zmq.Socket[bytes]) -> None:
        while True:
            await self._readable(sock)
            if self._read_some(sock, READ_BATCH) >= READ_BATCH:
                await asyncio.sleep(0)  # a full batch: let the clients' frames in

    def _read_some(self, sock: zmq.Socket[bytes], limit: int) -> int:
        """Handle waiting frames from ``sock`` until ``limit`` messages are handled or
        none is left; returns how many messages were handled (a frame is handled
        whole)."""
        peer = sock is self._results
        handled = 0
        self._reading = True
        try:
            while handled < limit:
                try:
                    frame = sock.recv(_NOBLOCK)
                except zmq.Again:
                    return handled
                handled += self._dispatch(frame, from_peer=peer)
            return handled
        finally:
            self._reading = False
            self._write_updates()

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

    def _dispatch(self, frame: bytes, *, from_peer: bool = False) -> int:
        """Handle one backbone frame (a message or a batch); returns how many messages
        it held (at least 1, so that a stream of junk still ends a read batch)."""
        messages, errors = bb.decode_batch(frame)
        for error in errors:
            log.warning(
                "dropping undecodable backbone frame: %s",
                error,
                extra=logs.event("undecodable_frame", error=error),
            )
        if from_peer:  # other workers may only report results
            for msg in messages:
                if isinstance(msg, bb.RouteDone):
                    self._on_route_done(msg)
                else:
                    log.warning(
                        "dropping %s on the results endpoint",
                        msg.TAG,
                        extra=logs.event("unexpected_result", kind=msg.TAG),
                    )
            return max(1, len(messages))
        handlers = self._handlers
        for msg in messages:
            handler = handlers.get(type(msg))
            if handler is None:
                log.warning(
                    "dropping unexpected backbone message %s",
                    msg.TAG,
                    extra=logs.event("unexpected_message", kind=msg.TAG),
                )
                continue
            self._last_seen = self.now
            handler(msg)
        return max(1, len(messages))

    def _on_beat(self, msg: bb.Beat) -> None:
        self.clock.beat(msg.epoch, msg.at, time.time())
        self._effects(self.replica.on_beat(msg))

    def _on_ack(self, msg: bb.AuthAck) -> None:
        client = self.clients.get(msg.conn)
        if client is not None:
            machine = client.machine
            self._perform(
                client, machine.on_ack(msg.epoch, msg.seq, self.replica, self.now, self._link())
            )
        self._effects(self.replica.observe_epoch(msg.epoch))

    def _on_kick(self, msg: bb.Kick) -> None:
        client = self.clients.get(msg.conn)
        if client is not None:
            self._perform(client, client.machine.on_kick())

    def _on_deliver(self, msg: bb.Deliver) -> None:
        if self.clock.now(time.time()) > msg.deadline:
            self.counters["expired"] += 1  # the origin answers unavailable
            return
        local = msg.origin == self.worker_id
        reply = None if local else self._peer(msg.reply_to, msg.reply_key)
        if not local and (reply is None or not self._can_report(reply)):
            self.counters["unreportable"] += 1  # not delivered: the origin times out
            stats.dropped(bb.RouteDone.TAG)
            return
        client = self.clients.get(msg.conn)
        status = "offline"
        if client is not None:
            actions, delivery = client.machine.on_deliver(
                msg.sender, msg.msg_id, msg.body, client.buffered()
            )
            self._perform(client, actions)
            status = delivery.value
        done = bb.RouteDone(msg.route, status)
        if reply is None:
            self._on_route_done(done)
            return
        box = self._results_out.get(reply)
        if box is None:
            box = self._results_out[reply] = bb.Outbox()
        for sent in box.add(done):
            self._send_result(reply, sent)
        self._flush_soon()

    def _can_report(self, reply: zmq.Socket[bytes]) -> bool:
        """Whether a result for the worker behind ``reply`` can be queued: there is room
        for a message now, or there was when this turn's frame for it was begun (nothing
        was sent there since, so the one frame still fits)."""
        box = self._results_out.get(reply)
        return (box is not None and len(box) > 0) or _can_send(reply)

    def _on_route_done(self, msg: bb.RouteDone) -> None:
        pending = self.routes.finish(msg.route)
        if pending is None:
            log.debug(
                "late or unknown RouteDone for route %d", msg.route, extra=logs.event("late_result")
            )
            return
        outcome = _ROUTE_STATUS.get(msg.status, _UNAVAILABLE)
        stats.routed(time.monotonic() - pending.opened, outcome[0])
        client = self.clients.get(pending.conn)
        if client is not None:
            self._result(client, pending.msg_id, outcome)

    # ------------------------------------------------------------------ replica effects

    def _effects(self, effects: list[ReplicaOutput]) -> None:
        """Carry out what the replica returned. Updates wait to be written until the
        read batch ends or anything else is done (so that updates that queued up go to
        each client in one write); nothing that reads the replica on a client's behalf
        runs in between, so every client still gets exactly the updates after the
        state it was shown, in order."""
        for effect in effects:
            if isinstance(effect, Forward):
                if self._unwritten_bytes + len(effect.frame) > COALESCE_BYTES:
                    self._write_updates()
                self._unwritten.append(effect)
                self._unwritten_bytes += len(effect.frame)
                continue
            self._write_updates()
            if isinstance(effect, Announce):
                self._announce()
                self._emit(bb.SnapshotRequest())
            elif isinstance(effect, RequestSnapshot):
                self._last_request = self.now
                self._emit(bb.SnapshotRequest())
            elif isinstance(effect, Resynced):
                self._resynced(effect)
        if not self._reading:
            self._write_updates()

    def _write_updates(self) -> None:
        if self._unwritten:
            updates, self._unwritten, self._unwritten_bytes = self._unwritten, [], 0
            self._fan_out(updates)

    def _announce(self) -> None:
        """``Hello``: every session that sent ``Authed``, the whole truth about us."""
        claims = [c for client in self.clients.values() if (c := client.machine.claim())]
        self._announced = frozenset(claim[0] for claim in claims)
        self._last_request = self.now
        if not self._repair:
            log.info(
                "announcing %d sessions to the coordinator",
                len(claims),
                extra=logs.event("announcing", sessions=len(claims)),
            )
        hello = bb.Hello(
            self.worker_id,
            self.replica.epoch or "",
            self.results_endpoint,
            self._results_key,
            claims,
        )
        self._repair = False  # until the frame with the Hello is lost (see _lost)
        if not self._emit(hello):
            self._repair = True

    def _fan_out(self, updates: list[Forward]) -> None:
        """Frame each update once, write the same bytes to every current client, all of
        ``updates`` in one write (:mod:`workers.frames`); then give lagging clients that
        drained their snapshot, and release held auth_oks (at the state after the last
        of ``updates``, which the replica holds)."""
        current = self._groups[Group.CURRENT]
        # Unpaused transports hold at most write_limit <= lag_bytes: the machine would
        # answer UPDATE for them, so only paused ones are asked (SKIP makes them LAGGING).
        for ws in list(self._pressured):
            client = current.get(ws)
            if client is not None:
                client.machine.on_update(client.buffered(), self.replica)
                self._place(client)
        frames = [SharedFrame(update.frame) for update in updates]
        write_all(current, frames)
        if current:
            knows = self.clock.knows(self.replica.epoch)
            now = self.clock.now(time.time()) if knows else 0.0
            for update, frame in zip(updates, frames, strict=True):
                stats.fanned_out(len(current), len(frame))
                if knows:
                    stats.update_latency(now - update.at)
        # After the broadcast: these start from a snapshot that already holds this update.
        for client in self._in_group(Group.BEHIND):
            self._perform(client, client.machine.on_sweep(client.buffered(), self.replica))
        now, link = self.now, self._link()
        for client in self._in_group(Group.ACKED):
            self._perform(client, client.machine.on_replica(self.replica, now, link))

    def _resynced(self, effect: Resynced) -> None:
        stats.resynced(effect.reason)
        replica = self.replica
        fields = logs.event(
            "replica_synced", epoch=replica.epoch, seq=replica.seq, reason=effect.reason.value
        )
        if effect.previous_epoch != replica.epoch:
            log.info(
                "replica synced to epoch %s at seq %d", replica.epoch, replica.seq, extra=fields
            )
        else:
            log.info("replica resynced at seq %d after lost updates", replica.seq, extra=fields)
        now, link = self.now, self._link()
        for client in self._each(State.ACKED, State.AUTHENTICATED):
            machine = client.machine
            self._perform(client, machine.on_resync(self.replica, self._announced, now, link))
        self._sweep_flow()
        self._link_changed()
        self._ready.set()

    # ------------------------------------------------------------------ periodic

    def _link(self) -> Link:
        live = self.replica.sync is SyncState.LIVE
        recent = self.now - self._last_seen <= self.settings.timing.coordinator_timeout
        return Link.UP if live and recent else Link.DOWN

    def _link_changed(self) -> None:
        if self._link() is Link.UP:
            for client in self._in_group(Group.VERIFIED):
                self._perform(client, client.machine.on_link_up(self.replica))

    def _sweep_flow(self) -> None:
        for client in self._in_group(Group.BEHIND):
            self._perform(client, client.machine.on_sweep(client.buffered(), self.replica))

    async def _heartbeats(self) -> None:
        while True:
            self._emit(bb.Heartbeat(self.worker_id))
            await asyncio.sleep(self.settings.timing.heartbeat_interval)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            # How late the tick fired: how long anything ready waits for this loop now.
            self.admission.observe(max(0.0, loop.time() - due))
            self._tick()

    def _tick(self) -> None:
        # Safety net for the edge-triggered ZeroMQ FD: a wake-up it failed to signal
        # costs at most one tick, never a stalled backbone.
        for wake in list(self._wakers.values()):
            wake()
        # Read every result already waiting before any route may time out: a result
        # that arrived in time is never overtaken by "unavailable".
        for sock in (self._results, self._dealer):
            while self._read_some(sock, READ_BATCH) >= READ_BATCH:
                pass
        now = self.now
        for pending in self.routes.expire(now):
            stats.routed(time.monotonic() - pending.opened, SendStatus.REJECTED)
            client = self.clients.get(pending.conn)
            if client is not None:
                self._result(client, pending.msg_id, _UNAVAILABLE)
        timing = self.settings.timing
        silent = now - self._last_seen > timing.coordinator_timeout
        if self.replica.sync is SyncState.LIVE:
            if silent:  # it may have dropped our sessions, or restarted: announce again
                log.warning(
                    "coordinator silent for %.1fs",
                    timing.coordinator_timeout,
                    extra=logs.event("coordinator_silent", silent=timing.coordinator_timeout),
                )
                self._effects(self.replica.start())
            elif self._repair:
                self._announce()  # the whole truth repairs whatever was lost
        elif now - self._last_request > timing.coordinator_timeout:
            self._last_request = now
            self._effects(self.replica.retry())
        self._watch_cutoff(now)
        self._watch_progress(now)
        self._sweep_flow()
        self._link_changed()
        self._measure_backlog()
        self._count_connections()
        self._log_counts(now)

    def _count_connections(self) -> None:
        groups = self._groups
        stats.connections(
            challenged=self.admission.pending,
            authenticating=sum(
                len(groups[g]) for g in (Group.VERIFIED, Group.AUTHENTICATING, Group.ACKED)
            ),
            online=len(groups[Group.CURRENT]),
            lagging=len(groups[Group.BEHIND]),
        )

    def _watch_cutoff(self, now: float) -> None:
        if self._link() is Link.UP:
            if self._cut_off:
                log.info(
                    "coordinator reachable again; admitting clients",
                    extra=logs.event("coordinator_back"),
                )
            self._down_since, self._cut_off = None, False
            return
        if self._down_since is None:
            self._down_since = now
        grace = self.settings.timing.cutoff_grace
        if not self._cut_off and now - self._down_since >= grace:
            self._cut_off = True
            log.warning(
                "cut off from the coordinator for %.0fs: closing %d clients with 1013",
                grace,
                len(self.clients),
                extra=logs.event("cut_off", silent=grace, clients=len(self.clients), code=1013),
            )
            for client in list(self.clients.values()):
                self._perform(client, client.machine.on_cutoff())

    def _watch_progress(self, now: float) -> None:
        """Sample the reading progress of every client whose backlog is past the write
        limit (the only ones whose backlog can matter)."""
        for ws in list(self._pressured):
            client = self._by_ws.get(ws)
            if client is not None:
                acked = acked_bytes(ws)
                self._perform(client, client.machine.on_progress(acked, client.buffered(), now))

    def _log_counts(self, now: float) -> None:
        summary = Counter({f"refused {k.value}": n for k, n in self.admission.refused.items()})
        summary.update({f"dropped {k}": n for k, n in self.counters.items()})
        if summary == self._logged or now - self._logged_at < LOG_EVERY:
            return
        new = summary - self._logged
        if new:
            log.info(
                "since the last report: %s (%d challenged now)",
                ", ".join(f"{k} {n}" for k, n in sorted(new.items())),
                self.admission.pending,
                extra=logs.event("counts", counts=dict(new), challenged=self.admission.pending),
            )
        self._logged, self._logged_at = summary, now


async def _close_ws(ws: ServerConnection, code: int, reason: str) -> None:
    """Close within :data:`CLOSE_TIMEOUT` (plus a little): ``ws.close`` first waits for
    the backlog to drain, which a client that stopped reading never lets happen."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT + 0.5):
            await ws.close(code, reason)
    except TimeoutError:
        log.debug(
            "close %d timed out; aborting the TCP connection",
            code,
            extra=logs.event("close_timeout", code=code),
        )
        if ws.transport is not None:
            ws.transport.abort()


def _page(conn: ServerConnection, page: pages.Page, *, head: bool) -> Response:
    response = conn.respond(HTTPStatus.OK, "")
    headers = response.headers
    del headers["Content-Type"], headers["Content-Length"]
    headers["Content-Type"] = page.content_type
    headers["Content-Length"] = str(len(page.body))
    for name, value in pages.SECURITY_HEADERS:
        headers[name] = value
    response.body = b"" if head else page.body
    return response


async def _never_upgraded(ws: ServerConnection) -> None:
    """The API port's connection handler: never called, as every API request gets an
    HTTP answer before any WebSocket handshake could complete."""
    await ws.close(CloseCode.POLICY_VIOLATION)


def _not_allowed(conn: ServerConnection, allow: str) -> Response:
    response = conn.respond(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n")
    response.headers["Allow"] = allow
    return response


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
    except (
        curve.BackboneSecurityError,
        endpoints.UnsafeDirectory,
        endpoints.EndpointInUse,
        SettingsError,
    ) as exc:
        log.error(
            "cannot start the backbone: %s",
            exc,
            extra=logs.event("backbone_failed", error=str(exc)),
        )
        return 2
    except TlsError as exc:
        log.error("cannot start TLS: %s", exc, extra=logs.event("tls_failed", error=str(exc)))
        return 2
    except ApiTokenError as exc:
        log.error(
            "cannot start the backend API: %s", exc, extra=logs.event("api_failed", error=str(exc))
        )
        return 2
    return await worker.run(stop)
