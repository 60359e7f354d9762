"""The worker's client table: every connection's machine, indexed in step (pure).

Theory of operation
-------------------
The worker keeps its clients grouped by what their machine says they need on a lobby
update (:class:`Group`, re-placed after every machine call by :meth:`ClientTable.place`),
so an update is one frame, built once, written to the ``CURRENT`` group's mapping as it
stands. Beside the groups the table keeps the clients by connection id, by handle (the
shell's opaque connection object), the acknowledged sessions by key (the last one
acknowledged, for delivering a direct message here without the coordinator), and the
*pressured* handles: transports past their write limit, the only ones whose backlog
can be past ``lag_bytes`` (see :mod:`workers.wsinternals`). Every index changes here
and nowhere else; :meth:`ClientTable.check` states how they agree.

The pressured set is filled by the shell's connection class (it pauses and resumes
writing), so it may hold handles of connections that are not (or no longer) clients:
whoever reads it looks each handle up.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from shared.v2 import Scope
from workers.connection import Connection
from workers.states import Flow, State

H = TypeVar("H", bound=Hashable)
"""The shell's handle of a connection (opaque here: a key and a thing to pass back)."""


class Group(enum.Enum):
    """What the worker must do for a client on a lobby update (from the machine's state)."""

    VERIFIED = "verified"  # waiting for the coordinator link
    AUTHENTICATING = "authenticating"  # Authed sent, waiting for the ack (counted only)
    ACKED = "acked"  # auth_ok held until the replica catches up
    CURRENT = "current"  # gets the update (broadcast)
    CURRENT_V2 = "current_v2"  # the same, in protocol version 2 (its own frame)
    SCOPED = "scoped"  # protocol 2, a watchlist or the count: routed (workers.scopes)
    BEHIND = "behind"  # lagging or stale: may resume with a snapshot


ACKNOWLEDGED: Final = frozenset(
    {Group.ACKED, Group.CURRENT, Group.CURRENT_V2, Group.SCOPED, Group.BEHIND}
)
"""The groups of sessions the coordinator acknowledged (and has not kicked)."""


def group_of(machine: Connection) -> Group | None:
    if machine.state is State.AUTHENTICATED:
        if machine.flow is not Flow.CURRENT:
            return Group.BEHIND
        if machine.v2 is None:
            return Group.CURRENT
        return Group.CURRENT_V2 if machine.v2.scope is Scope.LOBBY else Group.SCOPED
    if machine.state is State.ACKED:
        return Group.ACKED
    if machine.state is State.AUTHENTICATING:
        return Group.AUTHENTICATING
    return Group.VERIFIED if machine.state is State.VERIFIED else None


@dataclass(slots=True, eq=False)
class Client(Generic[H]):
    """A live connection: the shell's handle and the protocol state."""

    handle: H
    machine: Connection
    group: Group | None = None


class ClientTable(Generic[H]):
    """Every client, by connection id, by handle, by group, and the acknowledged
    sessions by key."""

    def __init__(self) -> None:
        self.by_conn: dict[int, Client[H]] = {}
        self.by_handle: dict[H, Client[H]] = {}
        self.sessions: dict[str, Client[H]] = {}
        """Acknowledged sessions by key (the last one acknowledged)."""
        self.groups: dict[Group, dict[H, Client[H]]] = {g: {} for g in Group}
        self.pressured: set[H] = set()
        """Handles whose transport is past its write limit (kept by the shell's
        connection class; may hold handles that are not clients)."""

    def __len__(self) -> int:
        return len(self.by_conn)

    def __iter__(self) -> Iterator[Client[H]]:
        """The clients in the order they connected (a snapshot: safe to change the
        table meanwhile)."""
        return iter(list(self.by_conn.values()))

    def get(self, conn: int) -> Client[H] | None:
        return self.by_conn.get(conn)

    def add(self, client: Client[H]) -> None:
        self.by_conn[client.machine.conn_id] = client
        self.by_handle[client.handle] = client
        self.place(client)

    def remove(self, client: Client[H]) -> None:
        """Forget ``client`` in every index (its machine's state does not matter)."""
        del self.by_conn[client.machine.conn_id]
        del self.by_handle[client.handle]
        self._move(client, None)

    def in_group(self, group: Group) -> list[Client[H]]:
        return list(self.groups[group].values())

    def place(self, client: Client[H]) -> None:
        """Move ``client`` to the group its machine's state now calls for (and in or out
        of the acknowledged sessions). Called after every machine call; a client no
        longer in the table has no group (its machine is closing)."""
        group = group_of(client.machine)
        if group is not client.group:
            self._move(client, group)

    def _move(self, client: Client[H], group: Group | None) -> None:
        was = client.group
        if was is not None:
            del self.groups[was][client.handle]
        if group is not None:
            self.groups[group][client.handle] = client
        client.group = group
        if (group in ACKNOWLEDGED) is not (was in ACKNOWLEDGED):
            key = client.machine.key
            assert key is not None  # acknowledged sessions have a key
            if group in ACKNOWLEDGED:
                self.sessions[key] = client
            elif self.sessions.get(key) is client:
                del self.sessions[key]

    def check(self) -> None:
        """Raise ``AssertionError`` unless the indexes agree (for tests)."""
        clients = list(self.by_conn.values())
        assert len(self.by_handle) == len(clients)
        grouped = 0
        for client in clients:
            assert self.by_conn[client.machine.conn_id] is client
            assert self.by_handle[client.handle] is client
            assert client.group is group_of(client.machine)
            if client.group is not None:
                assert self.groups[client.group][client.handle] is client
                grouped += 1
        assert sum(len(members) for members in self.groups.values()) == grouped
        for key, client in self.sessions.items():
            assert self.by_conn.get(client.machine.conn_id) is client
            assert client.group in ACKNOWLEDGED and client.machine.key == key
