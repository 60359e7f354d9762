"""A lobby update's fan-out: who gets it, framed once per protocol version (pure).

Theory of operation
-------------------
An update the replica forwards is written, framed once, to the clients whose view is
current: the ``CURRENT`` group (protocol 1's ``lobby_update``) and the ``CURRENT_V2``
group (version 2's binary ``update``, the same bytes for every whole-lobby client, with
``prev`` = ``seq - 1``), in one :class:`~workers.outputs.Broadcast`; the ``SCOPED``
group (version 2 clients of a watchlist or the count) gets what :mod:`workers.scopes`
routes to each. Only clients whose
transport is past its write limit (*pressured*) can be past ``lag_bytes``, so only they
are asked first (a ``SKIP`` makes them lagging). After the broadcast, lagging clients
that drained get a snapshot that already holds the update, and held ``auth_ok``\\ s are
released at the replica's new state (the state after the last of the updates), once
every client was written up to it: a batch too big for one write is written in parts
while the replica is already at its end, and a snapshot given after a part (to a
drained client or with an ``auth_ok``) would hold updates the next part sends again.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, TypeVar

from workers.clients import Group
from workers.outputs import Broadcast
from workers.states import Flow

if TYPE_CHECKING:
    from workers.core import WorkerCore
    from workers.replica import Forward

H = TypeVar("H", bound=Hashable)


def fan_out(core: WorkerCore[H], updates: list[Forward]) -> None:
    """Write each update to every current client, all of ``updates`` in one write;
    then give lagging clients that drained their snapshot, and release held
    auth_oks (at the state after the last of ``updates``, which the replica holds)."""
    table, shell, replica = core.clients, core.shell, core.replica
    current, current_v2 = table.groups[Group.CURRENT], table.groups[Group.CURRENT_V2]
    scoped = table.groups[Group.SCOPED]
    # Unpaused transports hold at most write_limit <= lag_bytes: the machine would
    # answer UPDATE for them, so only paused ones are asked (SKIP makes them LAGGING).
    budget = core.budget
    for handle in list(table.pressured):
        client = current.get(handle) or current_v2.get(handle) or scoped.get(handle)
        if client is not None:
            client.machine.on_update(shell.buffered(handle), replica, budget.allowance(handle))
            if client.machine.flow is not Flow.CURRENT:
                core.counters_budget["collapsed"] += budget.allowance(handle) <= 0
            table.place(client)
    shell.carry_out(Broadcast(current, updates, current_v2))
    if updates and updates[-1].seq != replica.seq:
        return  # a part of a batch: the rest is applied, not yet written (done then)
    # After the broadcast: these start from a snapshot that already holds this update.
    core.sweep_flow()
    now, link = core.now, core.link(core.now)
    for client in table.in_group(Group.ACKED):
        core.perform(client, client.machine.on_replica(replica, now, link))
