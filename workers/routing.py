"""Direct messages through a worker: local delivery, routes, results (pure).

Theory of operation
-------------------
A ``send`` to a session this worker holds and the coordinator
acknowledged (``ACKED`` or ``AUTHENTICATED``; the last one acknowledged, if the key
has several here) is delivered here at once: the same room check, the same recipient
bound (``rate_limited``), the same frames and results as the long way, which would
reach this very connection. The coordinator orders sessions, and a newer session of
the key elsewhere may already be acknowledged while this one's kick is on its way:
the message then goes to the key's older connection, which proved the key, so
``delivered`` is still the truth (and the coordinator's routing has the same window,
a route applied just before the replacement). Any other ``send`` becomes a ``Route``
to the coordinator, carrying its deadline on the coordinator's clock. The recipient's
worker drops a ``Deliver`` past that deadline, and otherwise writes it (or refuses
it, or finds the connection gone) and answers the origin worker directly
(:class:`~workers.outputs.Report`), never through the coordinator. It delivers only when that answer
can be queued. The origin answers ``unavailable`` at its own, later deadline, after
reading every result already waiting (the shell drains its sockets before a tick),
so ``rejected`` is never followed by a delivery and ``delivered`` always arrived.

A ``Route`` that could not be queued for the coordinator is answered ``unavailable``
at once (:meth:`Router.lost`). Pending routes and the coordinator's clock are
:mod:`workers.routes`'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from shared import backbone as bb
from shared import logs, timings
from shared.protocol import RejectReason, SendStatus
from workers import stats
from workers.clients import Client
from workers.outputs import Report, StartRoute
from workers.routes import CoordinatorClock, Room, RouteTable
from workers.states import Delivery

if TYPE_CHECKING:
    from workers.core import WorkerCore

log = logging.getLogger("workers")
H = TypeVar("H", bound=Hashable)

_ROUTE_STATUS: Final = {
    "delivered": (SendStatus.DELIVERED, None),
    "offline": (SendStatus.OFFLINE, None),
    "rate_limited": (SendStatus.REJECTED, RejectReason.RATE_LIMITED),
}
_UNAVAILABLE: Final = (SendStatus.REJECTED, RejectReason.UNAVAILABLE)


class Router(Generic[H]):
    """The direct messages of one :class:`~workers.core.WorkerCore`: it decides; the
    core's clients carry out what their machines answer."""

    def __init__(
        self, core: WorkerCore[H], *, wall: Callable[[], float], timer: Callable[[], float]
    ) -> None:
        self.core = core
        self.routes = RouteTable()
        self.clock = CoordinatorClock()
        self._wall = wall
        self._timer = timer

    def send(self, client: Client[H], send: StartRoute) -> None:
        """A well-formed ``send`` of ``client``: delivered here, or routed."""
        core = self.core
        machine = client.machine
        size = len(send.body)
        room = self.routes.room_for(machine.conn_id, size)
        if room is not Room.OK:
            reason = (
                RejectReason.RATE_LIMITED if room is Room.CONN_FULL else RejectReason.UNAVAILABLE
            )
            self._result(client, send.msg_id, (SendStatus.REJECTED, reason))
            return
        assert machine.key is not None
        recipient = core.clients.sessions.get(send.to)
        if recipient is not None and not core.stopping:
            self._deliver_here(client, recipient, send)
            return
        timeout = core.timing.route_timeout
        due, opened = core.now + timeout, self._timer()  # (uvloop's time is in ms)
        route = self.routes.open(machine.conn_id, send.msg_id, due, size, opened=opened)
        deadline = self.clock.now(self._wall()) + timings.route_ttl(timeout)
        msg = bb.Route(route, machine.key, send.to, send.msg_id, send.body, deadline)
        if not core.emit(msg):  # stopping: nothing goes out any more
            core.lost(msg)

    def _deliver_here(self, client: Client[H], recipient: Client[H], send: StartRoute) -> None:
        """Deliver a send to a session acknowledged on this worker, at once: what the
        recipient's machine decides (written, held for ``auth_ok``, or past its bound:
        ``rate_limited``) is the result, exactly as it would be by way of the
        coordinator, which would route it to this very connection."""
        sender = client.machine.key
        assert sender is not None
        delivery = self._hand_over(recipient, sender, send.msg_id, send.body)
        outcome = _ROUTE_STATUS[delivery.value]
        stats.routed(0.0, outcome[0])
        self._result(client, send.msg_id, outcome)

    def _hand_over(self, recipient: Client[H], sender: str, msg_id: str, body: str) -> Delivery:
        """What ``recipient``'s machine makes of a message, within what the memory
        budget allows it."""
        core = self.core
        allowance = core.allowance(recipient)
        outputs, delivery = recipient.machine.on_deliver(
            sender, msg_id, body, core.shell.buffered(recipient.handle), core.replica, allowance
        )
        core.perform(recipient, outputs)
        if delivery is Delivery.FULL and allowance < len(body):
            core.counters_budget["messages"] += 1
        return delivery

    def _result(
        self, client: Client[H], msg_id: str, outcome: tuple[SendStatus, RejectReason | None]
    ) -> None:
        core = self.core
        status, reason = outcome
        core.perform(client, client.machine.on_result(msg_id, status, reason))

    def _unavailable(self, conn: int, msg_id: str, opened: float) -> None:
        core = self.core
        stats.routed(self._timer() - opened, SendStatus.REJECTED)
        client = core.clients.get(conn)
        if client is not None:
            self._result(client, msg_id, _UNAVAILABLE)

    def deliver(self, msg: bb.Deliver) -> None:
        core = self.core
        if self.clock.now(self._wall()) > msg.deadline:
            core.counters["expired"] += 1  # the origin answers unavailable
            return
        local = msg.origin == core.worker_id
        peer = None if local else core.shell.peer(msg.reply_to, msg.reply_key)
        if not local and peer is None:
            core.counters["unreportable"] += 1  # not delivered: the origin times out
            stats.dropped(bb.RouteDone.TAG)
            return
        client = core.clients.get(msg.conn)
        status = "offline"
        if client is not None:
            status = self._hand_over(client, msg.sender, msg.msg_id, msg.body).value
        done = bb.RouteDone(msg.route, status)
        if peer is None:
            self.done(done)
            return
        core.hand(Report(peer, done))

    def done(self, msg: bb.RouteDone) -> None:
        core = self.core
        pending = self.routes.finish(msg.route)
        if pending is None:
            log.debug(
                "late or unknown RouteDone for route %d", msg.route, extra=logs.event("late_result")
            )
            return
        outcome = _ROUTE_STATUS.get(msg.status, _UNAVAILABLE)
        stats.routed(self._timer() - pending.opened, outcome[0])
        client = core.clients.get(pending.conn)
        if client is not None:
            self._result(client, pending.msg_id, outcome)

    def lost(self, msg: bb.Route) -> None:
        """``msg`` could not be queued for the coordinator: ``unavailable`` at once."""
        pending = self.routes.finish(msg.route)
        if pending is not None:
            self._unavailable(pending.conn, pending.msg_id, pending.opened)

    def expire(self, now: float) -> None:
        """Answer ``unavailable`` for every route past its deadline."""
        for pending in self.routes.expire(now):
            self._unavailable(pending.conn, pending.msg_id, pending.opened)
