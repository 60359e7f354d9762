"""The worker's asyncio shell: websockets and ZeroMQ around the pure core.

Theory of operation
-------------------
One event loop, so every input is handled to completion before the next one starts:
client frames (one handler task per connection), coordinator replies on the DEALER,
updates and beats on the SUB, results from other workers on the results PULL socket
(:mod:`workers.backbone`), HTTP requests before any upgrade (:mod:`workers.door`),
and a ticker every :data:`~workers.core.TICK`. The worker's heartbeats alone come from
a thread of their own (:meth:`~workers.backbone.Backbone.start_pulse`), so that no
amount of work on the loop delays them. The shell decides nothing
itself: it hands each input to the :class:`~workers.core.WorkerCore`, carries out the
outputs the core hands back, at once and in order, and answers the core's questions
about I/O (a transport's backlog, the bytes its peer acknowledged, whether another
worker's results socket can take a message).

Writes: every frame is written synchronously (:func:`websockets.broadcast`, or for
lobby updates and snapshots the bytes of a frame built once, :mod:`workers.frames`), in
call order, never awaited: a client's backlog is bounded by the machine's
rules (lobby updates skipped past ``lag_bytes``, direct messages refused to their
senders past ``max_queue_bytes``, its own replies bounded by its message rate, a stalled
client closed after ``stall_timeout``), so no write needs to wait, and no client's
backlog, whoever filled it, delays the reading of its own frames. A close is a task,
bounded by :data:`CLOSE_TIMEOUT`: ``ws.close`` first waits for the backlog to drain,
which a client that stopped reading never lets happen.

Idle clients: most clients are idle most of the time, so what one holds between frames
is what a worker's memory is made of. An authenticated client's ``recv`` has no timeout
around it (only a connection with a deadline pending arms one); the connection class
holds no more than it must (:mod:`workers.wsinternals`).

Metrics (:mod:`workers.stats`): what the machines' outputs say was written is recorded
as the shell writes it (a fan-out once per broadcast); the core records what it decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final, cast

import zmq
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from shared import backbone as bb
from shared import curve, endpoints, listen, logs, notify, protocol, stopping
from shared.options import SettingsError
from shared.protocol import CLOSE_REASONS, CloseCode
from shared.v2 import Scope
from shared.v2.server import with_applied
from workers import stats
from workers.api import ApiTokenError, BackendApi, load_token
from workers.apiserver import ApiServer
from workers.backbone import SHUTDOWN_LINGER_MS, Backbone
from workers.clients import Client, Group
from workers.core import TICK, Output, WorkerCore
from workers.door import Door
from workers.frames import SharedFrame
from workers.identities import identities, machine_names
from workers.lobby_v2 import Entries, update_frame
from workers.outputs import (
    AdmitPeers,
    AuthOutcome,
    Broadcast,
    ClientOutput,
    Close,
    Emit,
    FrameLimits,
    Report,
    Synced,
    Trim,
    Write,
    WriteSnapshot,
)
from workers.replica import Forward
from workers.scopes import Scopes
from workers.settings import TlsError, WorkerSettings
from workers.sources import parse_trusted
from workers.speaking_v2 import SUBPROTOCOL, V2Config
from workers.states import State
from workers.wsinternals import (
    acked_bytes,
    forget_handshake,
    limit_frames,
    note_close,
    send_buffer,
    trim_memory,
    watch_lesser,
    watched_connection,
    write_all,
    write_limit,
)

log = logging.getLogger("workers")
_noisy = logs.Limited(log)

CLOSE_TIMEOUT: Final = 2.0
"""Seconds a closing handshake may take before the TCP connection is dropped; short,
so a slow consumer's close and a shutdown stay prompt."""
INCOMING_FRAMES: Final = 4
"""Frames websockets may hold received and not yet handled, per connection, before it
stops reading (websockets' default is 16): the handler takes each at once, so a few are
enough, and at most this many of ``--max-frame-bytes`` wait per connection."""
LISTEN_BACKLOG: Final = 1024
"""Connections the kernel may hold completed for each worker before it accepts them
(capped by ``net.core.somaxconn``). websockets' default of 100 overflows in a reconnect
storm, and a dropped SYN costs the client a retransmit timer of a second or more, which
is longer than being refused and retrying."""


class Worker:
    """One worker process: accepts clients on the shared port, talks to the coordinator."""

    def __init__(self, settings: WorkerSettings) -> None:
        """Check the backbone's safety and open its sockets; raises
        :class:`~shared.curve.BackboneSecurityError`,
        :class:`~shared.endpoints.UnsafeDirectory`, :class:`~shared.endpoints.EndpointInUse`
        or :class:`~shared.options.SettingsError` for a backbone it must not use."""
        self.settings = settings
        self._tls = settings.network.tls_context()
        api = settings.api
        backend = (
            BackendApi(load_token(api.api_token_file))
            if api.enabled and api.api_token_file is not None
            else None
        )
        self.core: WorkerCore[ServerConnection] = WorkerCore(
            self,
            worker_id=settings.worker_id,
            timing=settings.timing,
            limits=settings.limits,
            admission=settings.admission,
            memory=settings.memory,
            verify=stats.timed_verify,
        )
        self.door = Door(
            self.core, self._now, trusted=parse_trusted(settings.network.trusted_proxies)
        )
        self.backbone = Backbone(settings)
        self.backbone.core = self.core
        self.core.handlers[bb.Refused] = self.backbone.on_refused
        self.core.handlers[bb.EjectSession] = self._eject
        self.api = (
            None
            if backend is None
            else ApiServer(
                backend,
                api,
                replica=self.core.replica,
                reachable=self.core.reachable,
                up=self.backbone.up,
                send_buffer=settings.memory.send_buffer_bytes,
            )
        )
        if self.api is not None:
            self.core.handlers[bb.EjectDone] = self.api.on_eject_done
        self.core.results_endpoint = self.backbone.results_endpoint
        self.core.results_key = self.backbone.results_key
        self._snapshot: SharedFrame | None = None
        self._snapshot_v2: tuple[tuple[str | None, int], SharedFrame] | None = None
        self._entries_v2 = Entries()
        v2 = settings.v2
        self._scopes = Scopes(ring_bytes=v2.resume_ring_bytes, ring_age=v2.resume_ring_age)
        events = self.api.feed if self.api is not None else None
        self.core.budget.indexes = lambda: self._scopes.memory + (events.memory if events else 0)
        self._scopes.room = self.core.budget.admits_index
        self._v2 = (
            V2Config(
                identities(
                    v2.public_url,
                    settings.network.host,
                    settings.network.port,
                    self._tls is not None,
                    machine_names() if not v2.public_url else (),
                ),
                v2.record_rate,
                v2.record_burst,
                self._scopes,
            )
            if not v2.v1_only
            else None
        )
        self._closing: dict[int, asyncio.Task[None]] = {}
        self._ready = asyncio.Event()

    @property
    def worker_id(self) -> str:
        return self.settings.worker_id

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ the core's I/O

    def to_client(self, client: Client[ServerConnection], output: ClientOutput) -> None:
        if isinstance(output, Write):
            broadcast([client.handle], output.frame)
            stats.written(output)
            if output.outcome is AuthOutcome.WRONG_SERVER and client.machine.v2 is not None:
                _noisy.warning(
                    "wrong_server",
                    "auth for another server refused (a relay, or a client given the wrong "
                    "URL; see --public-url): it signed for %r",
                    client.machine.v2.claimed,
                    claimed=client.machine.v2.claimed,
                )
        elif isinstance(output, WriteSnapshot):
            speaker = client.machine.v2
            if speaker is None:
                frame = self._snapshot_frame()
            elif speaker.scope is Scope.LOBBY:
                frame = self._v2_snapshot()
                applied = self._scopes.applied.get(speaker.conn, 0)
                if applied:  # (the same bytes for every other client)
                    assert isinstance(frame.text, bytes)
                    frame = SharedFrame(with_applied(frame.text, applied))
            else:
                replica, now = self.core.replica, self._now()
                frame = SharedFrame(self._scopes.fresh(speaker.conn, speaker.scope, replica, now))
            write_all((client.handle,), (frame,))
            stats.written(output)
        elif isinstance(output, Close):
            self._begin_close(client, output)
            if output.outcome is not None:
                stats.auth_ended(output.outcome)
        elif isinstance(output, FrameLimits):
            limit_frames(client.handle, output)

    def carry_out(self, output: Output) -> None:
        if isinstance(output, Emit):
            self.backbone.up(output.message)
        elif isinstance(output, Report):
            assert isinstance(output.peer, zmq.Socket)
            self.backbone.report(output.peer, output.result)
        elif isinstance(output, Broadcast):
            self._broadcast(output)
        elif isinstance(output, Synced):
            self._scopes.resynced(self.core.replica)
            if self.api is not None:
                self.api.resynced()
            self._ready.set()
        elif isinstance(output, AdmitPeers):
            self.backbone.admit(output.keys)
        elif isinstance(output, Trim):
            trim_memory()

    def buffered(self, handle: ServerConnection) -> int:
        transport = handle.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def acked(self, handle: ServerConnection) -> int | None:
        return acked_bytes(handle)

    def send_buffer(self, handle: ServerConnection) -> int:
        return send_buffer(handle)

    def peer(self, endpoint: str, key: str) -> zmq.Socket[bytes] | None:
        return self.backbone.peer(endpoint, key)

    def _broadcast(self, output: Broadcast[ServerConnection]) -> None:
        """Frame each update once, write the same bytes to every current client, all of
        them in one write (:mod:`workers.frames`)."""
        clients = output.clients
        if clients:  # (none: a lobby of version 2 clients frames nothing of protocol 1)
            updates = [u for u in output.updates if u.frame]  # records only: none
            frames = [SharedFrame(update.frame) for update in updates]
            left: list[tuple[ServerConnection, int]] = []
            write_all(clients, frames, left)
            self.core.observed(left)
            now = self.core.coordinator_now()
            for update, frame in zip(updates, frames, strict=True):
                stats.fanned_out(len(clients), len(frame))
                if now is not None:
                    stats.update_latency(now - update.at)
        clients_v2 = output.clients_v2
        if clients_v2:  # every update, records alone too (see workers.lobby_v2)
            frames = [SharedFrame(update_frame(u.update)) for u in output.updates if u.update]
            left = []
            write_all(clients_v2, frames, left)
            self.core.observed(left)
            for frame in frames:
                stats.fanned_out(len(clients_v2), len(frame))
        self._write_scoped(output.updates)
        if self.api is not None:
            self.api.published(output.updates)

    def _eject(self, msg: bb.Message) -> None:
        """A kick: close the connection with 4006 (its close leaves the lobby as any does)."""
        assert isinstance(msg, bb.EjectSession)
        client = self.core.clients.get(msg.conn)
        if client is not None:
            log.info(
                "conn %d kicked by the backend API",
                msg.conn,
                extra=logs.event("kicked", conn=msg.conn, reason=msg.reason),
            )
            self.core.perform(client, client.machine.on_kick(CloseCode.KICKED))

    def _write_scoped(self, updates: Sequence[Forward]) -> None:
        """Each watch client touched by ``updates`` gets its own (written once, after
        the broadcast); the resume ring and the count learn of them all."""
        if self._v2 is None:
            return
        table, replica = self.core.clients, self.core.replica
        routed = self._scopes.published(updates, len(replica.users), self._now())
        left: list[tuple[ServerConnection, int]] = []
        written = written_bytes = 0
        scoped = Group.SCOPED
        for conn, payloads in routed.items():
            client = table.by_conn.get(conn)
            if client is not None and client.group is scoped:
                frames = [SharedFrame(payload) for payload in payloads]
                write_all((client.handle,), frames, left)  # one write, a message each
                written += len(frames)
                for frame in frames:
                    written_bytes += len(frame.data)
        stats.fanned_out_frames(written, written_bytes)
        self.core.observed(left)

    def _write_counts(self) -> None:
        """The ``count`` frames due now."""
        if self._v2 is None:
            return
        table, epoch = self.core.clients, self.core.replica.epoch or ""
        left: list[tuple[ServerConnection, int]] = []
        to: dict[str, list[ServerConnection]] = {}  # one text per number and applied
        for conn, text in self._scopes.due(epoch, self._now()):
            client = table.by_conn.get(conn)
            if client is not None and client.group is Group.SCOPED:
                to.setdefault(text, []).append(client.handle)
        for text, handles in to.items():
            write_all(handles, (SharedFrame(text),), left)  # framed once for all
        self.core.observed(left)

    def _v2_snapshot(self) -> SharedFrame:
        """The current state's version 2 ``snapshot``, framed once per state."""
        replica = self.core.replica
        state = (replica.epoch, replica.seq)
        if self._snapshot_v2 is None or self._snapshot_v2[0] != state:
            self._snapshot_v2 = (state, SharedFrame(self._entries_v2.snapshot(replica)))
        return self._snapshot_v2[1]

    def _snapshot_frame(self) -> SharedFrame:
        """The current state's ``lobby_snapshot``, framed once however many clients
        get it (a mass join sends the same one to every joiner of an update)."""
        text = self.core.replica.snapshot_frame()  # the same str until the state changes
        if self._snapshot is None or self._snapshot.text is not text:
            self._snapshot = SharedFrame(text)
        return self._snapshot

    def _begin_close(self, client: Client[ServerConnection], close: Close) -> None:
        conn = client.machine.conn_id
        if conn not in self._closing:
            note_close(client.handle, close.code, close.reason)
            log.debug(
                "conn %d closing with %d",
                conn,
                close.code,
                extra=logs.event("conn_closing", conn=conn, code=close.code, reason=close.reason),
            )
            self._closing[conn] = asyncio.create_task(
                _close_ws(client.handle, close.code, close.reason)
            )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set; returns the process exit code."""
        s, net = self.settings, self.settings.network
        hosts = listen.hosts(net.host, ipv6_loopback=listen.ipv6_loopback())
        self.backbone.connect()
        try:
            self.backbone.bind()
            self.core.results_endpoint = self.backbone.results_endpoint
            server = await serve(
                self._serve_client,
                # A list, as asyncio's create_server takes (websockets passes it on).
                cast(Any, hosts),
                net.port,
                reuse_port=True,
                process_request=self.door.process_request,
                compression=None if net.compression == "none" else net.compression,
                ssl=self._tls,
                max_size=s.limits.pre_auth_frame_bytes,  # see FrameLimits
                max_queue=INCOMING_FRAMES,
                ping_interval=net.ping_interval,
                ping_timeout=net.ping_timeout,
                close_timeout=CLOSE_TIMEOUT,
                write_limit=write_limit(s.limits.lag_bytes),
                create_connection=watched_connection(
                    self.core.clients.pressured, s.memory.send_buffer_bytes
                ),
                backlog=LISTEN_BACKLOG,
                select_subprotocol=None if self._v2 is None else _select_v2,
            )
        except (OSError, zmq.ZMQError) as exc:
            taken = isinstance(exc, OSError)  # the public port: an error at start
            where = listen.unbindable(hosts, net.port) if taken else f"{net.host}:{net.port}"
            log.error(
                "worker %s cannot listen on %s: %s",
                s.worker_id,
                where,
                exc,
                extra=logs.event("listen_failed", host=where, port=net.port, error=str(exc)),
            )
            self.backbone.close(linger_ms=0)
            return 2 if taken else 1
        servers = [server]
        if self.api is not None:
            api = s.api
            host = api.api_host or net.host
            api_hosts = listen.hosts(host, ipv6_loopback=listen.ipv6_loopback())
            try:
                await self.api.listen(api_hosts, api.api_port or 0, self._tls)
            except OSError as exc:
                where = listen.unbindable(api_hosts, api.api_port or 0)
                log.error(
                    "worker %s cannot serve the API on %s: %s",
                    s.worker_id,
                    where,
                    exc,
                    extra=logs.event(
                        "api_listen_failed", host=where, port=api.api_port, error=str(exc)
                    ),
                )
                server.close()
                await server.wait_closed()
                self.backbone.close(linger_ms=0)
                return 2
        stats.started(self.settings.admission.lag_target)
        self.core.start(self._now())
        self.backbone.start_pulse()  # heartbeats, whatever the loop is doing
        backbone = self.backbone
        tasks = [
            asyncio.create_task(backbone.read(backbone.dealer), name="dealer"),
            asyncio.create_task(backbone.read(backbone.sub), name="sub"),
            asyncio.create_task(backbone.read(backbone.results), name="results"),
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
        url = f"{'wss' if self._tls else 'ws'}://{listen.address(host, port)}{protocol.WS_PATH}"
        log.info(
            "worker %s ready at %s", self.worker_id, url, extra=logs.event("worker_ready", url=url)
        )
        notify.ready(f"worker {self.worker_id} ready at {url}")
        await asyncio.Event().wait()  # stay pending: only stop or a failure ends run()

    async def _shutdown(self, servers: list[Server], tasks: list[asyncio.Task[Any]]) -> None:
        log.info("worker %s stopping", self.worker_id, extra=logs.event("worker_stopping"))
        notify.stopping(f"worker {self.worker_id} stopping")
        self.backbone.stop_pulse()  # no heartbeat after the Goodbye
        self.core.stop()  # Goodbye: the coordinator drops all our sessions at once
        self.backbone.flush()
        if self.api is not None:
            await self.api.stop()
        for server in servers:
            server.close(code=CloseCode.GOING_AWAY, reason=CLOSE_REASONS[CloseCode.GOING_AWAY])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                await asyncio.gather(*(server.wait_closed() for server in servers))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.backbone.close(linger_ms=SHUTDOWN_LINGER_MS)
        log.info("worker %s stopped", self.worker_id, extra=logs.event("worker_stopped"))

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK
            await asyncio.sleep(TICK)
            # How late the tick fired: how long anything ready waits for this loop now.
            lag = max(0.0, loop.time() - due)
            stats.loop_lag(lag)
            self.core.loop_lag(lag)
            self.backbone.drain()
            self.core.tick(loop.time())
            if self.api is not None:
                self.api.tick(loop.time())
            self._write_counts()
            logs.flush_suppressed()

    # ------------------------------------------------------------------ clients

    async def _serve_client(self, ws: ServerConnection) -> None:
        core = self.core
        source = self.door.source_of(ws.remote_address, ws.request)
        v2 = self._v2 if ws.subprotocol == SUBPROTOCOL else None
        client = core.connect(ws, source, str(ws.remote_address), self._now(), v2)
        forget_handshake(ws)  # the source is known: the headers are not needed again
        if client is None:
            await _close_ws(ws, CloseCode.TRY_AGAIN_LATER, CLOSE_REASONS[CloseCode.TRY_AGAIN_LATER])
            stats.closed(ws)
            return
        watch_lesser(ws, lambda kind: core.lesser(client, kind, self._now()))
        machine = client.machine
        conn_id = machine.conn_id
        try:
            while machine.state is not State.CLOSING:
                frame = await self._next_frame(client)
                if frame is None:
                    core.deadline(client, self._now())
                else:
                    core.frame(client, frame, self._now())
                del frame  # not held while waiting for the next (a watchlist: 1.4 KiB)
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
            core.closed(client)
        task = self._closing.pop(conn_id, None)
        if task is not None:
            await task
        stats.closed(ws)
        states = [t[2].value for t in machine.trace]
        log.debug(
            "conn %d ended in %s",
            conn_id,
            states,
            extra=logs.event("conn_ended", conn=conn_id, states=states),
        )

    async def _next_frame(self, client: Client[ServerConnection]) -> str | bytes | None:
        """The next client frame, or ``None`` when the connection's deadline passed."""
        deadline = client.machine.deadline
        if deadline is None:  # an online client: no timeout to arm for every frame
            return await client.handle.recv()
        try:
            async with asyncio.timeout_at(deadline):
                return await client.handle.recv()
        except TimeoutError:
            return None


def _select_v2(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Unless ``--v1-only``: version 2 for a client that offers it; any other client
    (no subprotocol, or only others) goes on in version 1 with none selected."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


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


async def main(settings: WorkerSettings) -> int:
    """Run a worker until SIGTERM/SIGINT; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopping.on_stop_signals(loop, lambda _: stop.set())
    try:
        return await _run(settings, stop)
    finally:
        stopping.settle(loop)


async def _run(settings: WorkerSettings, stop: asyncio.Event) -> int:
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
