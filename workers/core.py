"""Everything a worker decides, with no sockets (sans-I/O).

Theory of operation
-------------------
The shell (:mod:`workers.server`, with :mod:`workers.backbone` and :mod:`workers.door`)
hands :class:`WorkerCore` what happens, one input at a time, with the time: a client's
connection, frame, deadline or end; a frame from the coordinator or from another
worker; a tick (every :data:`TICK`); a lost message. (Heartbeats are the backbone's
own, from a thread: :mod:`workers.backbone`.) The core answers
with :data:`Output` items and the per-client outputs of its machines
(:data:`ClientOutput`), which it hands to the shell (:class:`Shell`) the moment it
decides them, in order; the shell carries each out before the core goes on. So a fact
the core reads next (a client's backlog) already includes what was just written, and a
fan-out can carry the ``CURRENT`` group's live mapping without a copy. What only I/O
knows (a transport's buffered bytes, the bytes its peer acknowledged, whether another
worker's results socket can take a message) the core asks of the same :class:`Shell`,
about opaque handles.

The parts: the client table (:class:`~workers.clients.ClientTable`, each client's
:class:`~workers.connection.Connection`), the :class:`~workers.replica.Replica`, the
:class:`~workers.routes.RouteTable` with the :class:`~workers.routes.CoordinatorClock`,
and the door's :class:`~workers.admission.Admission`. The rules that join them:

* **Fan-out** (:mod:`workers.fanout`). An update the replica forwards is written,
  framed once per protocol version, to the clients whose view is current
  (:class:`Broadcast`). Updates read in one batch of backbone input (they queued up
  while the worker was busy) are held and go to each client together, up to
  :data:`COALESCE_BYTES` of frames, and are flushed before any other output: nothing
  that reads the replica on a client's behalf runs in between, so every client still
  gets exactly the updates after the state it was shown, in order.
* **Direct messages** (:class:`~workers.routing.Router`): delivered here to a session
  acknowledged here, else routed by the coordinator and answered by the recipient's
  worker directly (:class:`~workers.routing.Report`); every ``send`` gets exactly one
  result, and ``rejected`` is never followed by a delivery.
* **The coordinator link** (:mod:`workers.link`): silence, the repair of lost messages
  (``Hello``, the whole truth, at the next tick; a ``Route`` that could not be queued
  is answered ``unavailable`` at once) and the cut-off (1013 to every client).
* **Memory** (:mod:`workers.budget`): every write is charged to the budget and
  released as transports drain; past it the heaviest addresses are refused first.
* **Admission** (:class:`~workers.admission.Admission`, its auth window sized by the
  event loop's lag, fed once a tick): the upgrade request is asked first
  (:meth:`WorkerCore.door`, see :mod:`workers.door`); a connection refused after all
  when its handler starts, or cut off then, is closed right after the handshake with
  1013. Refusals are summed in ``/healthz`` and logged at most every
  :data:`~workers.health.LOG_EVERY`.
* **Health** (:mod:`workers.health`): ``/healthz`` costs the same whatever the load.

Metrics (:mod:`workers.stats`): the core records what it decides (routes, refusals,
drops, resyncs, the connection counts once a tick); the shell records what it writes.
The core never raises for any sequence of inputs.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from shared import backbone as bb
from shared import logs, protocol
from workers import stats
from workers.admission import Admission, Admit
from workers.budget import MemoryBudget, MemoryLimits
from workers.clients import Client, ClientTable, Group
from workers.connection import Connection, Verifier, announcement
from workers.fanout import fan_out
from workers.health import Health
from workers.link import Change, CoordinatorLink, Due
from workers.outputs import (
    AdmitPeers,
    Answer,
    CoreOutput,
    Emit,
    Lesser,
    Shell,
    StartRoute,
    Synced,
    Trim,
    Write,
    WriteSnapshot,
)
from workers.outputs import Output as MachineOutput
from workers.replica import Announce, Forward, Replica, RequestSnapshot, Resynced, SyncState
from workers.replica import Output as ReplicaOutput
from workers.routing import Router
from workers.states import Event, Link, State

if TYPE_CHECKING:
    from workers.admission import AdmissionLimits
    from workers.limits import Limits
    from workers.settings import Timing
    from workers.speaking_v2 import V2Config

log = logging.getLogger("workers")
noisy = logs.Limited(log)
"""Lines a peer can make the worker write over and over: at most a few a second."""
H = TypeVar("H", bound=Hashable)
_M = TypeVar("_M")

TICK: Final = 0.1
"""Seconds between ticks: route deadlines, lagging and stalled clients, coordinator
silence, repairs."""
COALESCE_BYTES: Final = 64 * 1024
"""Lobby updates read in one batch (they queued up while the worker was busy) are
written to each client together, one system call for all of them, up to this many
bytes of frames: what a write past a client's ``lag_bytes`` check may add to its
backlog, small beside the default ``lag_bytes``."""

_SETTLED: Final = frozenset({State.ACKED, State.AUTHENTICATED, State.CLOSING})
"""States in which a connection is out of the auth window (acknowledged, or done)."""
_UNANSWERED: Final = frozenset({Event.AUTH_INVALID, Event.DEADLINE, Event.FLOOD})
"""How a connection leaves the challenge phase without a valid answer (a bad frame,
silence until its deadline, or a flood of control frames): its source is marked as one
that closed unanswered."""
_REPAIRED_BY_HELLO: Final = (bb.Authed, bb.SetRecord, bb.Closed, bb.Hello)


Output = CoreOutput
"""What the core hands its shell besides clients' outputs (:mod:`workers.outputs`)."""


# --------------------------------------------------------------------------- core


class WorkerCore(Generic[H]):
    """A worker's decisions. ``now`` is the shell's monotonic clock (the event loop's);
    ``wall`` (the wall clock) serves route deadlines and latency figures, ``timer``
    the routing times recorded."""

    def __init__(
        self,
        shell: Shell[H],
        *,
        worker_id: str,
        timing: Timing,
        limits: Limits,
        admission: AdmissionLimits,
        memory: MemoryLimits | None = None,
        verify: Verifier = protocol.verify_auth,
        wall: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shell = shell
        self.worker_id = worker_id
        self.timing = timing
        self.limits = limits
        self.results_endpoint = ""
        """Where other workers report results to this one (set by the shell once bound)."""
        self.results_key = ""
        self.replica = Replica()
        self.router: Router[H] = Router(self, wall=wall, timer=timer)
        self.routes = self.router.routes
        self.clock = self.router.clock
        self.clients: ClientTable[H] = ClientTable()
        self.admission = Admission(admission)
        self.memory = memory or MemoryLimits()
        self.budget: MemoryBudget[H] = MemoryBudget(self.memory.memory_budget)
        self.figures = Health()
        self.counters = self.figures.dropped
        self.counters_budget = self.figures.refused_by_budget
        self.stopping = False
        self.now = 0.0
        """The time of the input being handled."""
        self._verify = verify
        self._wall = wall
        self._conn_ids = itertools.count(1)
        self._announced: frozenset[int] = frozenset()
        self.coordinator = CoordinatorLink(timing, TICK)
        # Updates applied but not yet written: held to the end of the read batch
        # (see _replica_outputs), never across anything else that reads the replica.
        self._unwritten: list[Forward] = []
        self._unwritten_bytes = 0
        self._reading = False
        replica, updated = self.replica, self._replica_outputs
        self.handlers: dict[type[bb.Message], Callable[[bb.Message], None]] = {
            bb.Welcome: lambda m: self._on_welcome(_as(m, bb.Welcome)),
            bb.Reannounce: lambda m: updated(replica.reannounce()),
            bb.Snapshot: lambda m: updated(replica.on_snapshot(_as(m, bb.Snapshot))),
            bb.Update: lambda m: updated(replica.on_update(_as(m, bb.Update))),
            bb.Beat: lambda m: self._on_beat(_as(m, bb.Beat)),
            bb.AuthAck: lambda m: self._on_ack(_as(m, bb.AuthAck)),
            bb.Kick: lambda m: self._on_kick(_as(m, bb.Kick)),
            bb.Deliver: lambda m: self.router.deliver(_as(m, bb.Deliver)),
            bb.RouteDone: lambda m: self.router.done(_as(m, bb.RouteDone)),
        }

    # ------------------------------------------------------------------ view

    @property
    def cut_off(self) -> bool:
        """Whether the worker is cut off from its coordinator (:mod:`workers.link`)."""
        return self.coordinator.cut_off

    def link(self, now: float) -> Link:
        return self.coordinator.state(now, self.replica.sync is SyncState.LIVE)

    def reachable(self, now: float) -> bool:
        """Whether the worker serves: the coordinator is reachable, and not stopping."""
        return self.link(now) is Link.UP and not self.stopping

    def health(self, now: float) -> tuple[bool, dict[str, object]]:
        """Whether the worker serves, and the ``/healthz`` body (:mod:`workers.health`)."""
        up = self.reachable(now)
        return up, self.figures.body(self, up)

    def coordinator_now(self) -> float | None:
        """The coordinator's wall clock now, if known for the replica's epoch (for the
        latency of updates)."""
        if not self.clock.knows(self.replica.epoch):
            return None
        return self.clock.now(self._wall())

    # ------------------------------------------------------------------ lifecycle

    def start(self, now: float) -> None:
        """The worker starts: announce (``Hello``) and ask for a snapshot."""
        self.now = now
        self._replica_outputs(self.replica.start())

    def stop(self) -> None:
        """Say goodbye: the coordinator drops all our sessions at once, and nothing goes
        out to it after this."""
        self.emit(bb.Goodbye(self.worker_id))
        self.stopping = True

    def loop_lag(self, lag: float) -> None:
        """Once a tick: how late the tick fired, which sizes the auth window."""
        self.admission.observe(lag)

    # ------------------------------------------------------------------ clients

    def door(self, source: str, now: float) -> str | None:
        """Before the handshake: the reason to refuse an upgrade from ``source`` (HTTP
        503 with ``Retry-After``), or ``None`` to go on with it."""
        if self.cut_off and self.link(now) is Link.DOWN:
            stats.refused_cut_off()
            reason = "cut_off"
        elif not self.budget.admits(2 * self.memory.send_buffer_bytes, source):
            self.budget.refused_connections += 1
            stats.refused(Admit.FULL)
            reason = "memory"
        else:
            verdict = self.admission.check(source, now)
            if verdict is Admit.OK:
                return None
            stats.refused(verdict)
            reason = verdict.value
        log.debug(
            "upgrade refused: %s",
            reason,
            extra=logs.event("conn_refused", reason=reason, before_handshake=True),
        )
        return reason

    def connect(
        self, handle: H, source: str, peer: str, now: float, v2: V2Config | None = None
    ) -> Client[H] | None:
        """A WebSocket from ``source`` completed its handshake (``v2``: in protocol
        version 2): the new client (greeted), or ``None`` if it is refused (the shell
        closes it with 1013)."""
        self.now = now
        conn_id = next(self._conn_ids)
        if self.cut_off and self.link(now) is Link.DOWN:
            log.debug(
                "conn %d refused: cut off from the coordinator",
                conn_id,
                extra=logs.event("conn_refused", conn=conn_id, reason="cut_off"),
            )
            stats.refused_cut_off()
            return None
        if not self.budget.reserve(handle, self.shell.send_buffer(handle), source):
            log.debug(
                "conn %d refused: memory budget",
                conn_id,
                extra=logs.event("conn_refused", conn=conn_id, reason="memory"),
            )
            stats.refused(Admit.FULL)
            return None
        decision = self.admission.admit(conn_id, source, now)
        stats.evicted(len(decision.evict), waited=decision.waited)
        if decision.waited:
            stats.marked("replaced")
        for evicted in decision.evict:  # a heavier source's, or one that waited too long
            if (victim := self.clients.get(evicted)) is not None:
                self.perform(victim, victim.machine.on_evicted())
        if not decision.admitted:
            self.budget.release(handle)
            log.debug(
                "conn %d refused: %s",
                conn_id,
                decision.verdict.value,
                extra=logs.event("conn_refused", conn=conn_id, reason=decision.verdict.value),
            )
            stats.refused(decision.verdict)
            return None
        nonce = secrets.token_bytes(protocol.NONCE_BYTES)
        machine = Connection.open(conn_id, nonce, now, self.limits, self._verify, v2)
        client = Client(handle, machine)
        self.clients.add(client)
        log.debug(
            "conn %d opened from %s",
            conn_id,
            peer,
            extra=logs.event("conn_opened", conn=conn_id, peer=peer),
        )
        self.perform(client, machine.greeting())
        return client

    def frame(self, client: Client[H], frame: str | bytes, now: float) -> None:
        """A frame from ``client``."""
        self.now = now
        machine = client.machine
        handle = client.handle
        outputs = machine.on_frame(
            frame,
            now,
            self.link(now),
            self.replica,
            self.shell.buffered(handle),
            self.budget.allowance(handle),
        )
        if machine.state is not State.CHALLENGED:
            self._left_challenge(machine)
        self.perform(client, outputs)

    def lesser(self, client: Client[H], kind: Lesser, now: float) -> Answer:
        """A ping, a pong or a fragment from ``client``, as the WebSocket layer parses it
        (its transport may outlive the client's place in the table by the close
        timeout): what to do with it."""
        self.now = now
        machine = client.machine
        pressured = client.handle in self.clients.pressured
        outputs, answer = machine.on_lesser(kind, now, pressured)
        if machine.state is not State.CHALLENGED:
            self._left_challenge(machine)
        self.perform(client, outputs)
        return answer

    def deadline(self, client: Client[H], now: float) -> None:
        """``client``'s deadline (its machine's ``deadline``) passed with no frame."""
        self.now = now
        machine = client.machine
        outputs = machine.on_deadline(now)
        if machine.state is not State.CHALLENGED:
            self._left_challenge(machine)
        self.perform(client, outputs)

    def _left_challenge(self, machine: Connection) -> None:
        """``machine`` is out of the challenge phase: answered, or (a bad frame, or
        silence to its deadline) not, which marks its source."""
        trace = machine.trace
        if trace and trace[-1][0] is State.CHALLENGED and trace[-1][1] in _UNANSWERED:
            if self.admission.unanswered(machine.conn_id, self.now):
                stats.marked("unanswered")
        else:
            self.admission.authenticated(machine.conn_id)

    def closed(self, client: Client[H]) -> None:
        """``client``'s transport ended (whoever closed it)."""
        if self.admission.closed(client.machine.conn_id, self.now):
            stats.marked("closed")
        self.clients.remove(client)
        self.budget.release(client.handle)
        self.perform(client, client.machine.on_transport_closed())

    def perform(self, client: Client[H], outputs: list[MachineOutput]) -> None:
        """Carry out what a machine returned (called after every machine call), after
        the updates held back, to the groups as they were before the call."""
        if self._unwritten:
            self._write_updates()
        self.clients.place(client)
        machine = client.machine
        if machine.state in _SETTLED:  # out of the auth window (idempotent)
            self.admission.settled(machine.conn_id)
        shell = self.shell
        for output in outputs:
            if isinstance(output, Emit):
                if not self.stopping:
                    shell.carry_out(output)
            elif isinstance(output, StartRoute):
                self.router.send(client, output)
            else:
                shell.to_client(client, output)
                if isinstance(output, Write | WriteSnapshot):  # charged as written
                    self.budget.observe(client.handle, shell.buffered(client.handle))

    def allowance(self, client: Client[H]) -> int:
        """What the memory budget still allows ``client``'s backlog."""
        return self.budget.allowance(client.handle)

    def observed(self, backlogs: list[tuple[H, int]]) -> None:
        """The shell wrote to these connections and left each with the backlog given:
        charge it."""
        budget, by_handle = self.budget, self.clients.by_handle
        for handle, backlog in backlogs:
            if handle in by_handle:
                budget.observe(handle, backlog)

    # ------------------------------------------------------------------ backbone

    def begin_batch(self) -> None:
        """The shell starts reading a batch of backbone frames (see :meth:`end_batch`)."""
        self._reading = True

    def end_batch(self) -> None:
        """The batch ends: write the updates it held."""
        self._reading = False
        self._write_updates()

    def from_coordinator(self, frame: bytes, now: float) -> int:
        """Handle one frame from the coordinator (DEALER or SUB; a message or a batch);
        returns how many messages it held (at least 1, so that a stream of junk still
        ends a read batch)."""
        self.now = now
        handlers = self.handlers
        messages = self._decode(frame)
        for msg in messages:
            handler = handlers.get(type(msg))
            if handler is None:
                noisy.warning(
                    "unexpected_message",
                    "dropping unexpected backbone message %s",
                    msg.TAG,
                    kind=msg.TAG,
                )
                continue
            self.coordinator.last_seen = now
            handler(msg)
        return max(1, len(messages))

    def from_peer(self, frame: bytes, now: float) -> int:
        """Handle one frame on the results endpoint: other workers may only report
        results. Returns as :meth:`from_coordinator` does."""
        self.now = now
        messages = self._decode(frame)
        for msg in messages:
            if isinstance(msg, bb.RouteDone):
                self.router.done(msg)
            else:
                noisy.warning(
                    "unexpected_result",
                    "dropping %s on the results endpoint",
                    msg.TAG,
                    kind=msg.TAG,
                )
        return max(1, len(messages))

    @staticmethod
    def _decode(frame: bytes) -> list[bb.Message]:
        messages, errors = bb.decode_batch(frame)
        for error in errors:
            noisy.warning(
                "undecodable_frame", "dropping undecodable backbone frame: %s", error, error=error
            )
        return messages

    def emit(self, msg: bb.UpMessage) -> bool:
        """Hand ``msg`` for the coordinator to the shell; ``False`` if refused at once
        (stopping)."""
        if self.stopping:
            return False
        self.hand(Emit(msg))
        return True

    def hand(self, output: Output) -> None:
        """Hand ``output`` to the shell, after the updates held back."""
        if self._unwritten:
            self._write_updates()
        self.shell.carry_out(output)

    def lost(self, msg: bb.Message) -> None:
        """``msg`` could not be queued for the coordinator: count it, and repair what it
        leaves wrong (a message that matters: re-register; a route: ``unavailable``)."""
        self.counters[msg.TAG] += 1
        stats.dropped(msg.TAG)
        if isinstance(msg, _REPAIRED_BY_HELLO):
            if not self.coordinator.repair:
                log.warning(
                    "lost %s to the coordinator; will re-register",
                    msg.TAG,
                    extra=logs.event("event_lost", kind=msg.TAG),
                )
            self.coordinator.repair = True
        elif isinstance(msg, bb.Route):
            self.router.lost(msg)

    def results_lost(self, count: int) -> None:
        """``count`` results for another worker could not be queued."""
        self.counters["results"] += count
        for _ in range(count):
            stats.dropped(bb.RouteDone.TAG)

    def _on_welcome(self, msg: bb.Welcome) -> None:
        self.hand(AdmitPeers(frozenset(msg.peers)))
        self._replica_outputs(self.replica.on_welcome(msg))

    def _on_beat(self, msg: bb.Beat) -> None:
        self.clock.beat(msg.epoch, msg.at, self._wall())
        self._replica_outputs(self.replica.on_beat(msg))

    def _on_ack(self, msg: bb.AuthAck) -> None:
        client = self.clients.get(msg.conn)
        if client is not None:
            now = self.now
            outputs = client.machine.on_ack(msg.epoch, msg.seq, self.replica, now, self.link(now))
            self.perform(client, outputs)
        self._replica_outputs(self.replica.observe_epoch(msg.epoch))

    def _on_kick(self, msg: bb.Kick) -> None:
        client = self.clients.get(msg.conn)
        if client is not None:
            self.perform(client, client.machine.on_kick())

    # ------------------------------------------------------------------ replica outputs

    def _replica_outputs(self, outputs: list[ReplicaOutput]) -> None:
        """Carry out what the replica returned. Updates wait to be written until the
        read batch ends or anything else is done (so that updates that queued up go to
        each client in one write); nothing that reads the replica on a client's behalf
        runs in between, so every client still gets exactly the updates after the
        state it was shown, in order."""
        for output in outputs:
            if isinstance(output, Forward):
                if self._unwritten_bytes + len(output.frame) > COALESCE_BYTES:
                    self._write_updates()
                self._unwritten.append(output)
                self._unwritten_bytes += len(output.frame)
                continue
            self._write_updates()
            if isinstance(output, Announce):
                self._announce()
                self.emit(bb.SnapshotRequest())
            elif isinstance(output, RequestSnapshot):
                self.coordinator.last_request = self.now
                self.emit(bb.SnapshotRequest())
            elif isinstance(output, Resynced):
                self._resynced(output)
        if not self._reading:
            self._write_updates()

    def _write_updates(self) -> None:
        if self._unwritten:
            updates, self._unwritten, self._unwritten_bytes = self._unwritten, [], 0
            fan_out(self, updates)

    def _announce(self) -> None:
        """``Hello``: every session that sent ``Authed``, the whole truth about us."""
        announced = announcement(client.machine for client in self.clients)
        self._announced = frozenset(claim[0] for claim in announced.sessions)
        self.coordinator.last_request = self.now
        if not self.coordinator.repair:
            log.info(
                "announcing %d sessions to the coordinator",
                len(announced.sessions),
                extra=logs.event("announcing", sessions=len(announced.sessions)),
            )
        hello = bb.Hello(
            self.worker_id,
            self.replica.epoch or "",
            self.results_endpoint,
            self.results_key,
            *announced,
        )
        self.coordinator.repair = False  # until the frame with the Hello is lost (see lost)
        if not self.emit(hello):
            self.coordinator.repair = True

    def _resynced(self, output: Resynced) -> None:
        stats.resynced(output.reason)
        replica = self.replica
        fields = logs.event(
            "replica_synced", epoch=replica.epoch, seq=replica.seq, reason=output.reason.value
        )
        if output.previous_epoch != replica.epoch:
            log.info(
                "replica synced to epoch %s at seq %d", replica.epoch, replica.seq, extra=fields
            )
        else:
            log.info("replica resynced at seq %d after lost updates", replica.seq, extra=fields)
        now, link = self.now, self.link(self.now)
        for client in self.clients:
            if client.machine.state in (State.ACKED, State.AUTHENTICATED):
                outputs = client.machine.on_resync(replica, self._announced, now, link)
                self.perform(client, outputs)
        self.sweep_flow()
        self._link_changed()
        self.hand(Synced())

    # ------------------------------------------------------------------ periodic

    def _link_changed(self) -> None:
        if self.link(self.now) is Link.UP:
            for client in self.clients.in_group(Group.VERIFIED):
                self.perform(client, client.machine.on_link_up(self.replica))

    def sweep_flow(self) -> None:
        shell = self.shell
        budget = self.budget
        for client in self.clients.in_group(Group.BEHIND):
            handle = client.handle
            outputs = client.machine.on_sweep(
                shell.buffered(handle), self.replica, budget.allowance(handle)
            )
            self.perform(client, outputs)

    def tick(self, now: float) -> None:
        """What is due at ``now`` (the shell calls it every :data:`TICK`, after reading
        every result already waiting, so that a result that arrived in time is never
        overtaken by ``unavailable``)."""
        self.now = now
        self.router.expire(now)
        due = self.coordinator.due(now, self.replica.sync is SyncState.LIVE)
        if due is Due.REANNOUNCE:  # it may have dropped our sessions, or restarted
            silent = self.timing.coordinator_timeout
            log.warning(
                "coordinator silent for %.1fs",
                silent,
                extra=logs.event("coordinator_silent", silent=silent),
            )
            self._replica_outputs(self.replica.start())
        elif due is Due.REPAIR:
            self._announce()  # the whole truth repairs whatever was lost
        elif due is Due.RETRY:
            self._replica_outputs(self.replica.retry())
        self._watch_cutoff(now)
        self._watch_progress(now)
        self._watch_memory()
        self.sweep_flow()
        self._link_changed()
        shell = self.shell
        self.figures.tick(self, (shell.buffered(h) for h in self.clients.pressured), now)

    def _watch_cutoff(self, now: float) -> None:
        change = self.coordinator.watch(now, self.replica.sync is SyncState.LIVE)
        if change is Change.BACK:
            log.info(
                "coordinator reachable again; admitting clients",
                extra=logs.event("coordinator_back"),
            )
        elif change is Change.CUT:
            grace, count = self.timing.cutoff_grace, len(self.clients)
            log.warning(
                "cut off from the coordinator for %.0fs: closing %d clients with 1013",
                grace,
                count,
                extra=logs.event("cut_off", silent=grace, clients=count, code=1013),
            )
            for client in self.clients:
                self.perform(client, client.machine.on_cutoff())

    def _watch_progress(self, now: float) -> None:
        """Sample the reading progress of every client with a backlog: those past the
        write limit, and those the memory budget charges (any backlog at all)."""
        shell, by_handle = self.shell, self.clients.by_handle
        for handle in {*self.clients.pressured, *self.budget.backlogged()}:
            client = by_handle.get(handle)
            if client is not None:
                acked, buffered = shell.acked(handle), shell.buffered(handle)
                self.perform(client, client.machine.on_progress(acked, buffered, now))

    def _watch_memory(self) -> None:
        """Charge every backlog as it stands now (released as transports drain), and
        give memory back to the system once the load has left."""
        budget, shell, by_handle = self.budget, self.shell, self.clients.by_handle
        for handle in {*budget.backlogged(), *self.clients.pressured}:
            if handle in by_handle:
                budget.observe(handle, shell.buffered(handle))
        stats.memory(budget.figures())
        if budget.drained():
            self.hand(Trim())


def _as(msg: bb.Message, cls: type[_M]) -> _M:
    assert isinstance(msg, cls)
    return msg
