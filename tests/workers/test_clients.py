"""The client table keeps its indexes in step: by connection, by handle, by group, and
the acknowledged sessions by key (the last one acknowledged)."""

from __future__ import annotations

import pytest

from workers.clients import Client, ClientTable, Group
from workers.connection import Connection
from workers.limits import Limits
from workers.states import Flow, State

KEY = "a" * 64


def client(conn: int, state: State, key: str | None = KEY) -> Client[str]:
    machine = Connection.open(conn, b"n" * 32, 0.0, Limits())
    machine.state, machine.key = state, key
    return Client(f"h{conn}", machine)


def test_a_client_is_in_every_index_and_leaves_them_all() -> None:
    table: ClientTable[str] = ClientTable()
    c = client(1, State.AUTHENTICATED)
    table.add(c)
    assert table.get(1) is c and table.by_handle["h1"] is c
    assert table.groups[Group.CURRENT] == {"h1": c} and table.sessions == {KEY: c}
    table.check()
    c.machine.flow = Flow.LAGGING
    table.place(c)
    assert table.groups[Group.BEHIND] == {"h1": c} and not table.groups[Group.CURRENT]
    assert table.sessions == {KEY: c}  # still acknowledged
    table.check()
    table.remove(c)
    assert len(table) == 0 and not table.by_handle and not table.sessions
    assert all(not members for members in table.groups.values())
    table.check()


def test_the_last_acknowledged_session_of_a_key_is_the_one_kept() -> None:
    table: ClientTable[str] = ClientTable()
    old, new = client(1, State.AUTHENTICATED), client(2, State.AUTHENTICATING)
    table.add(old)
    table.add(new)
    assert table.sessions == {KEY: old}  # not acknowledged yet
    new.machine.state = State.ACKED
    table.place(new)
    assert table.sessions == {KEY: new}
    old.machine.state = State.CLOSING  # the older one is kicked: the newer one stays
    table.place(old)
    assert table.sessions == {KEY: new} and old.group is None
    table.check()
    table.remove(new)
    assert table.sessions == {}
    table.check()


def test_check_finds_an_index_out_of_step() -> None:
    table: ClientTable[str] = ClientTable()
    c = client(1, State.AUTHENTICATED)
    table.add(c)
    c.machine.state = State.ACKED  # changed, not re-placed
    with pytest.raises(AssertionError):
        table.check()
