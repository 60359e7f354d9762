"""Everything the coordinator decides, with no sockets (sans-I/O).

Theory of operation
-------------------
The shell (:mod:`coordinator.service`) reads one backbone message at a time and hands
it to :meth:`CoordinatorCore.handle` with the sending worker's id and the time; between
messages it calls :meth:`CoordinatorCore.tick`. Both return :data:`Output` items, which
the shell carries out in order: a message to one worker (:class:`ToWorker`) or to all
of them (:class:`Publish`). When a message to a worker cannot be queued the shell says
so (:meth:`CoordinatorCore.undelivered`) and the core decides what repairs it.

The parts: the :class:`~coordinator.lobby.Lobby` (who is online, in one order), the
:class:`~coordinator.registry.WorkerRegistry` (who is there, and whether the lobby has
heard them all), the :class:`~coordinator.batching.BatchWindow` (when to publish) and
the beat clock. The rules that join them:

* **Registration gates events.** Only a registered worker's ``Authed``, ``Closed`` and
  ``Route`` are applied. Anything else from a worker the coordinator does not know (it
  restarted, or gave the worker up for dead) gets ``Reannounce`` (at most once per beat
  interval) and is otherwise ignored; a ``Route`` is answered ``unavailable`` at once.
  The ``Hello`` that follows is the whole truth about the worker
  (:meth:`~coordinator.lobby.Lobby.reconcile`).
* **Publication order.** A flush publishes the delta first, then the acknowledgements
  and kicks, so an ``AuthAck`` never names a ``seq`` that was not published.
* **Lost replies are repaired, not ignored.** Every reply that matters (``Welcome``,
  ``Reannounce``, ``Snapshot``, ``AuthAck``, ``Kick``) that could not be queued makes
  its worker unregistered: it is asked to re-register, and its ``Hello`` makes the
  lobby re-send what was lost (acks of pending sessions, kicks of replaced ones). A lost
  ``Deliver`` or ``RouteDone`` needs no repair: the origin answers ``unavailable`` at
  its deadline, which is the truth. Every loss is counted by kind.
* **Direct messages between workers are routed by the published lobby** (its
  sessions were acknowledged, so the recipient's worker knows the connection; one
  between two sessions of one worker is delivered there and never seen here). A route
  past its
  deadline is dropped here and answered ``unavailable``. A recipient the lobby does not
  show is ``offline``, except while the lobby is rebuilding, when it is
  ``unavailable``. The recipient's worker answers the origin directly.
* **Workers that fall silent** for longer than the timeout are forgotten and their
  sessions leave in one update. The coordinator's own stalls do not count: each call
  arriving later than :attr:`CoordinatorCore.due` (or than the previous call, whichever
  is later) tells the registry how long the coordinator was not listening.

Input from workers is checked field by field by :func:`shared.backbone.decode`; the
core also refuses what a schema cannot express (keys that are not 64 hex characters)
and never raises for any sequence of messages.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from coordinator.batching import BatchWindow
from coordinator.flaps import FlapCounter
from coordinator.lobby import Claim, Lobby, Session
from coordinator.registry import WorkerRegistry
from coordinator.settings import CoordinatorSettings
from shared import backbone as bb
from shared import logs, records, timings
from shared.protocol import is_hex_key
from shared.records import Record

log = logging.getLogger("coordinator")
noisy = logs.Limited(log)
"""Lines a worker can make the coordinator write over and over: at most a few a second."""


@dataclass(frozen=True, slots=True)
class ToWorker:
    worker: str
    message: bb.DownMessage


@dataclass(frozen=True, slots=True)
class Publish:
    message: bb.PubMessage


Output = ToWorker | Publish

_REPAIRED_BY_HELLO = (bb.Welcome, bb.Reannounce, bb.Snapshot, bb.AuthAck, bb.Kick)


class CoordinatorCore:
    """The coordinator's decisions. ``now`` is a monotonic clock; ``wall`` the wall
    clock, used only for route deadlines and in beats (workers measure their offset
    from it)."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        epoch: str,
        now: float,
        previous: str = "",
        rebuild: bool = True,
    ) -> None:
        """``previous`` is the epoch of the coordinator that ran before on the same
        endpoint, if known: ``epoch`` must be above it. ``rebuild``: whether workers may
        still hold sessions of that coordinator (it did not stop with no worker left)."""
        self.settings = settings
        self.lobby = Lobby(epoch)
        timing = settings.timing
        self.registry = WorkerRegistry(
            timeout=timing.worker_timeout,
            grace=timing.worker_timeout,
            reannounce_every=timing.heartbeat_interval,
            started=now,
        )
        if previous:
            self.registry.restarted = rebuild
            self.lobby.observe_epoch(previous, bb.new_epoch)
        self._window = BatchWindow(
            timing.batch_window, settings.batch_ceiling, timing.batch_window_clients
        )
        self._flush_at: float | None = None
        self._next_beat = now
        self._next_check = now  # silent and unregistered workers
        self._awake_until = now  # when the shell is due to call next at the latest
        self._snapshot: bb.Snapshot | None = None  # of (epoch, lobby.seq), made once
        self.dropped: Counter[str] = Counter()
        """Replies that could not be queued, by message tag."""
        self.expired_routes = 0
        self.epoch_changes = 0
        """Moves above an epoch a worker reported (see :mod:`coordinator.lobby`)."""
        self.workers_expired = 0
        """Workers presumed dead (silent past the timeout)."""
        self.ghosts_reaped = 0
        """Sessions removed because their worker was presumed dead."""
        self.flaps = FlapCounter()
        """Keys that left and joined again soon after, counted at publication."""
        self.peer_keys: list[str] = []
        """The CURVE public keys (Z85) of the workers admitted, told to each worker in
        its ``Welcome`` so that its results socket takes them alone (set by the shell)."""

    @property
    def epoch(self) -> str:
        return self.lobby.epoch

    @property
    def batch_window(self) -> float:
        """The current batching window in seconds (it widens under load)."""
        return self._window.current

    # ------------------------------------------------------------------ input

    def handle(self, worker: str, msg: bb.Message, now: float, wall: float) -> list[Output]:
        """Apply one message from ``worker``; returns what to send."""
        out: list[Output] = []
        self._woke(now)
        state = self.registry.heard(worker, now)
        if isinstance(msg, bb.Hello):
            self._on_hello(worker, msg, now, out)
        elif isinstance(msg, bb.Goodbye):
            dropped = self.lobby.drop_worker(worker)
            self.registry.forget(worker)
            log.info(
                "worker %s said goodbye; %d sessions leave",
                worker,
                dropped,
                extra=logs.event("worker_goodbye", worker=worker, sessions=dropped),
            )
        elif isinstance(msg, bb.SnapshotRequest):
            out.append(ToWorker(worker, self.snapshot()))
        elif not state.registered:
            if self.registry.ask(worker, now):
                log.info(
                    "unknown worker %s; asking it to announce its sessions",
                    worker,
                    extra=logs.event("worker_unknown", worker=worker),
                )
                out.append(ToWorker(worker, bb.Reannounce()))
            if isinstance(msg, bb.Route):
                out.append(ToWorker(worker, bb.RouteDone(msg.route, "unavailable")))
            elif isinstance(msg, bb.Eject):
                out.append(ToWorker(worker, bb.EjectDone(msg.request, "unavailable")))
        elif isinstance(msg, bb.Authed):
            if is_hex_key(msg.key):
                record = self._record(worker, msg.status, msg.data)
                self.lobby.add_user(msg.key.lower(), Session(worker, msg.conn), record)
            else:
                noisy.warning(
                    "malformed_key",
                    "worker %s sent an auth for a malformed key; ignored",
                    worker,
                    worker=worker,
                )
        elif isinstance(msg, bb.SetRecord):
            if is_hex_key(msg.key) and records.is_record(msg.status, msg.data):
                self.lobby.set_record(
                    msg.key.lower(), Session(worker, msg.conn), (msg.status, msg.data)
                )
            else:
                self._malformed_record(worker)
        elif isinstance(msg, bb.Closed):
            if is_hex_key(msg.key):
                self.lobby.remove_user(msg.key.lower(), Session(worker, msg.conn))
        elif isinstance(msg, bb.Route):
            self._on_route(worker, msg, now, wall, out)
        elif isinstance(msg, bb.Eject):
            self._on_eject(worker, msg, now, out)
        elif not isinstance(msg, bb.Heartbeat):
            noisy.warning(
                "unexpected_message",
                "dropping %s from worker %s: not an event",
                msg.TAG,
                worker,
                worker=worker,
                kind=msg.TAG,
            )
        self._schedule(now, wall, out)
        self._sleeps(now)
        return out

    def _record(self, worker: str, status: str, data: str) -> Record:
        """The record a worker sent; the default if it is not one (and a warning)."""
        if status == records.DEFAULT_STATUS and data == records.DEFAULT_DATA:
            return records.DEFAULT
        if records.is_record(status, data):
            return (status, data)
        self._malformed_record(worker)
        return records.DEFAULT

    @staticmethod
    def _malformed_record(worker: str) -> None:
        noisy.warning(
            "malformed_record",
            "worker %s sent a malformed key or record; the default record is kept",
            worker,
            worker=worker,
        )

    def _on_hello(self, worker: str, msg: bb.Hello, now: float, out: list[Output]) -> None:
        reported = {msg.epoch, *(epoch for _, _, epoch, _, _ in msg.sessions)} - {""}
        if reported - self.lobby.own_epochs:
            self.registry.restarted = True
        for epoch in sorted(reported, key=bb.epoch_generation, reverse=True):
            if self.lobby.observe_epoch(epoch, bb.new_epoch):
                self.epoch_changes += 1
                log.warning(
                    "worker %s reported epoch %s, not older than ours: moving to epoch %s",
                    worker,
                    epoch,
                    self.epoch,
                    extra=logs.event(
                        "epoch_moved", worker=worker, reported=epoch, epoch=self.epoch
                    ),
                )
        kept = {conn: self._record(worker, status, data) for conn, status, data in msg.records}
        claims = [
            Claim(conn, key.lower(), (epoch, seq), acked, kept.get(conn, records.DEFAULT))
            for conn, key, epoch, seq, acked in msg.sessions
            if is_hex_key(key)
        ]
        done = self.lobby.reconcile(worker, claims)
        if done.duplicates or len(claims) != len(msg.sessions):
            malformed = len(msg.sessions) - len(claims)
            log.warning(
                "worker %s listed %d connections twice and %d malformed keys; ignored",
                worker,
                done.duplicates,
                malformed,
                extra=logs.event(
                    "hello_ignored", worker=worker, duplicates=done.duplicates, malformed=malformed
                ),
            )
        self.registry.register(worker, now, (msg.results, msg.results_key))
        log.info(
            "worker %s registered with %d sessions (%d of ours ended)",
            worker,
            done.claimed,
            done.removed,
            extra=logs.event(
                "worker_registered", worker=worker, sessions=done.claimed, ended=done.removed
            ),
        )
        out.append(ToWorker(worker, bb.Welcome(self.epoch, self.peer_keys)))

    def _on_route(
        self, worker: str, msg: bb.Route, now: float, wall: float, out: list[Output]
    ) -> None:
        if wall > msg.deadline:
            self.expired_routes += 1
            out.append(ToWorker(worker, bb.RouteDone(msg.route, "unavailable")))
            return
        target = self.lobby.get_published(msg.to.lower()) if is_hex_key(msg.to) else None
        if target is None:
            status = "unavailable" if self.registry.rebuilding(now) else "offline"
            out.append(ToWorker(worker, bb.RouteDone(msg.route, status)))
            return
        reply_to, reply_key = self.registry.results_of(worker)
        deliver = bb.Deliver(
            worker,
            reply_to,
            reply_key,
            msg.route,
            target.conn,
            msg.sender,
            msg.msg_id,
            msg.body,
            msg.deadline,
        )
        out.append(ToWorker(target.worker, deliver))

    def _on_eject(self, worker: str, msg: bb.Eject, now: float, out: list[Output]) -> None:
        """A kick: the key's current session (published or not yet) is told to close
        (4006); its close removes it from the lobby in order, as any close does."""
        key = msg.key.lower() if is_hex_key(msg.key) else None
        session = None if key is None else self.lobby.get_user(key)
        if session is None:
            outcome = "unavailable" if self.registry.rebuilding(now) else "offline"
        else:
            outcome = "kicked"
            out.append(ToWorker(session.worker, bb.EjectSession(session.conn, msg.reason)))
            log.info(
                "kicking %s at worker %s's request",
                key,
                worker,
                extra=logs.event("kick", key=key, worker=worker, reason=msg.reason),
            )
        out.append(ToWorker(worker, bb.EjectDone(msg.request, outcome)))

    # ------------------------------------------------------------------ time

    def snapshot(self) -> bb.Snapshot:
        """The lobby exactly as of ``seq`` (what clients have been told), made once per
        ``(epoch, seq)``: every worker that asks while nothing is published gets the same
        message, so the shell encodes it once (a coordinator restart makes every worker
        ask at about the same time)."""
        cached = self.current_snapshot
        if cached is None:
            seq, mseq, users, entries = self.lobby.snapshot()
            cached = self._snapshot = bb.Snapshot(self.epoch, seq, mseq, users, entries)
        return cached

    @property
    def current_snapshot(self) -> bb.Snapshot | None:
        """The snapshot :meth:`snapshot` made, while it is still the current one."""
        cached = self._snapshot
        if cached is None or cached.seq != self.lobby.seq or cached.epoch != self.epoch:
            return None
        return cached

    def tick(self, now: float, wall: float, *, expire: bool = True) -> list[Output]:
        """What is due at ``now``: expiries (unless the caller is still behind on its
        input, which may hold the very heartbeats that prove a worker alive), a flush,
        a beat, re-registration requests. Nothing happens between :attr:`due` times,
        so the shell need not call it more often."""
        out: list[Output] = []
        self._woke(now)
        if expire:
            self._next_check = now + timings.EXPIRY_CHECK
        for worker in self.registry.expire(now) if expire else ():
            dropped = self.lobby.drop_worker(worker)
            self.workers_expired += 1
            self.ghosts_reaped += dropped
            log.warning(
                "worker %s silent for %.1fs; %d sessions leave",
                worker,
                self.registry.timeout,
                dropped,
                extra=logs.event(
                    "worker_expired", worker=worker, silent=self.registry.timeout, sessions=dropped
                ),
            )
        for worker in self.registry.unregistered():
            if self.registry.ask(worker, now):
                out.append(ToWorker(worker, bb.Reannounce()))
        self._schedule(now, wall, out)
        if self._flush_at is not None and now >= self._flush_at:
            self.publish(now, wall, out)
        if now >= self._next_beat:
            self._next_beat = now + self.settings.timing.heartbeat_interval
            out.append(Publish(bb.Beat(self.epoch, self.lobby.seq, wall)))
        self._sleeps(now)
        return out

    def _woke(self, now: float) -> None:
        """A call at ``now``: the time past when it was due at the latest is the
        coordinator's own stall (a late loop, or a long message handled before)."""
        late = now - self._awake_until
        if late > 0:
            self.registry.stalled(late)

    def _sleeps(self, now: float) -> None:
        """A call made at ``now`` ends: the next is due by :attr:`due` at the latest."""
        self._awake_until = max(now, min(self.due, now + timings.EXPIRY_CHECK))

    @property
    def due(self) -> float:
        """When :meth:`tick` next has something to do: a flush, a beat, or the check for
        silent workers and for unregistered ones to ask again (every
        :data:`~shared.timings.EXPIRY_CHECK`, and at once after a lost reply)."""
        due = min(self._next_beat, self._next_check)
        flush_at = self._flush_at
        return due if flush_at is None or flush_at > due else flush_at

    def _schedule(self, now: float, wall: float, out: list[Output]) -> None:
        if not self.lobby.pending:
            return
        if self._window.floor <= 0:
            self.publish(now, wall, out)
        elif self._flush_at is None:
            # Every online session may follow the whole lobby: its size is the most
            # clients an update can go to (see coordinator.batching).
            self._flush_at = now + self._window.opened(now, self.lobby.online)

    def publish(self, now: float, wall: float, out: list[Output]) -> None:
        """Publish everything pending: the delta first, then acks and kicks. ``wall``
        goes into the update, for the workers' latency figures."""
        self._flush_at = None
        result = self.lobby.flush()
        if result.delta is not None:
            self._snapshot = None  # out of date: not kept in memory until the next ask
            d = result.delta
            update = bb.Update(
                self.epoch, d.seq, d.mseq, d.joined, d.left, wall, d.updated, d.records
            )
            out.append(Publish(update))
            self._window.flushed(now)
            if d.joined or d.left:
                self.flaps.published(d.joined, d.left, now)
        for session, (epoch, seq) in result.acks:
            out.append(ToWorker(session.worker, bb.AuthAck(session.conn, epoch, seq)))
        for session in result.kicks:
            out.append(ToWorker(session.worker, bb.Kick(session.conn)))

    # ------------------------------------------------------------------ output failures

    def undelivered(self, worker: str, msg: bb.DownMessage) -> None:
        """A message to ``worker`` could not be queued (its queue is full, or it is not
        connected). Count it; if it matters, make the worker re-register."""
        self.dropped[msg.TAG] += 1
        if isinstance(msg, _REPAIRED_BY_HELLO) and self.registry.unregister(worker):
            self._next_check = float("-inf")  # ask it to re-register at the next tick
            log.warning(
                "lost %s to worker %s; it must re-register to repair its view",
                msg.TAG,
                worker,
                extra=logs.event("reply_lost", worker=worker, kind=msg.TAG),
            )
