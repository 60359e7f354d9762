"""Pending routes and the coordinator's clock as a worker sees it."""

from __future__ import annotations

from workers.routes import CoordinatorClock, RouteTable


def test_a_route_remembers_when_it_was_opened() -> None:
    table = RouteTable()
    route = table.open(1, "m1", deadline=15.0, size=10, opened=10.0)
    pending = table.finish(route)
    assert pending is not None and (pending.opened, pending.deadline) == (10.0, 15.0)
    assert table.bytes == 0 and len(table) == 0


def test_the_clock_knows_an_epoch_once_one_of_its_beats_came() -> None:
    clock = CoordinatorClock()
    assert not clock.knows("e1") and not clock.knows(None)
    clock.beat("e1", at=105.0, local=100.0)
    assert clock.knows("e1") and not clock.knows("e2")
    assert clock.now(200.0) == 205.0
    clock.beat("e2", at=50.0, local=100.0)  # a new coordinator: the estimate starts afresh
    assert clock.knows("e2") and not clock.knows("e1")
    assert clock.offset == -50.0
