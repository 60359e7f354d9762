"""The keepalive schedule (workers.keepalive), without processes or sockets: when each
connection is pinged and which are dropped, against a model that scans every
connection each time (the schedule reads only the due prefix of its ordered maps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.keepalive import Beat, Due, Schedule


def test_first_ping_one_interval_after_the_handshake_then_every_interval() -> None:
    s: Schedule[str] = Schedule(20.0, 20.0)
    s.add("a", 0.0)
    assert s.next_at() == 20.0
    assert s.due(19.9) == Due()
    assert s.due(20.0).ping == ["a"]
    assert s.beat("a") is Beat.AWAITING
    s.answered("a")
    assert s.beat("a") is Beat.IDLE
    assert s.next_at() == 40.0  # one interval after the ping, not after the pong
    assert s.due(40.0).ping == ["a"]


def test_a_ping_unanswered_for_the_timeout_drops_the_connection_once() -> None:
    s: Schedule[str] = Schedule(20.0, 5.0)
    s.add("a", 0.0)
    s.add("b", 1.0)
    assert s.due(21.0).ping == ["a", "b"]
    s.answered("b")
    assert s.next_at() == 26.0
    assert s.due(25.9) == Due()
    assert s.due(26.0) == Due(drop=["a"])
    assert "a" not in s and s.beat("a") is None
    assert s.due(100.0).drop == []


def test_no_second_ping_while_one_waits_for_its_pong() -> None:
    s: Schedule[str] = Schedule(1.0, 5.0)
    s.add("a", 0.0)
    assert s.due(1.0).ping == ["a"]
    assert s.due(2.0).ping == []  # still awaiting the first pong
    s.answered("a")
    assert s.due(3.0).ping == ["a"]


def test_without_a_timeout_pings_every_interval_and_never_drops() -> None:
    s: Schedule[str] = Schedule(1.0, None)
    s.add("a", 0.0)
    for t in range(1, 10):
        assert s.due(float(t)) == Due(ping=["a"])
    assert s.beat("a") is Beat.IDLE


def test_paused_writes_are_not_pinged_and_asked_again_one_interval_later() -> None:
    s: Schedule[str] = Schedule(1.0, 1.0)
    s.add("a", 0.0)
    assert s.due(1.0, paused={"a"}) == Due()
    assert s.beat("a") is Beat.IDLE and s.next_at() == 2.0
    assert s.due(2.0).ping == ["a"]


def test_an_unsolicited_pong_and_a_discarded_connection_change_nothing_else() -> None:
    s: Schedule[str] = Schedule(1.0, 1.0)
    s.answered("nobody")
    s.add("a", 0.0)
    s.answered("a")  # nothing awaited
    assert s.beat("a") is Beat.IDLE
    s.discard("a")
    s.discard("a")
    assert len(s) == 0 and s.next_at() is None and s.due(10.0) == Due()


def test_a_connection_added_again_starts_its_round_again_behind_the_others() -> None:
    s: Schedule[str] = Schedule(1.0, 1.0)
    s.add("a", 0.0)
    s.add("b", 0.5)
    s.add("a", 0.75)
    assert s.next_at() == 1.5
    assert s.due(1.5).ping == ["b"]
    assert s.due(1.75).ping == ["a"]


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 1.0), (-1.0, None), (1.0, 0.0)])
def test_settings_that_cannot_schedule_are_refused(interval: float, timeout: float | None) -> None:
    with pytest.raises(ValueError, match="keepalive"):
        Schedule(interval, timeout)


class Model:
    """The same rules, scanning every connection: when it is next due, and since when
    it awaits a pong."""

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.interval, self.timeout = interval, timeout
        self.next: dict[int, float] = {}
        self.deadline: dict[int, float] = {}

    def due(self, now: float, paused: set[int]) -> tuple[set[int], set[int]]:
        drop = {h for h, at in self.deadline.items() if at <= now}
        for h in drop:
            del self.next[h], self.deadline[h]
        ping = set()
        for h, at in list(self.next.items()):
            if at > now:
                continue
            self.next[h] = now + self.interval
            if h in self.deadline or h in paused:
                continue
            if self.timeout is not None:
                self.deadline[h] = now + self.timeout
            ping.add(h)
        return ping, drop


ops = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3)),
    st.tuples(st.just("discard"), st.integers(0, 3)),
    st.tuples(st.just("answered"), st.integers(0, 3)),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0])),
    st.tuples(st.just("due"), st.frozensets(st.integers(0, 3), max_size=3)),
)


@settings(max_examples=300, deadline=None)
@given(
    interval=st.sampled_from([0.5, 1.0, 2.0]),
    timeout=st.sampled_from([None, 0.25, 1.0, 3.0]),
    steps=st.lists(ops, max_size=80),
)
def test_the_schedule_agrees_with_a_full_scan(
    interval: float, timeout: float | None, steps: list[tuple[str, object]]
) -> None:
    """Whatever the order of handshakes, pongs, closes and timer runs: the same pings
    and drops as scanning every connection, no ping sooner than an interval after the
    last, no drop before the timeout, and nothing due before next_at()."""
    s: Schedule[int] = Schedule(interval, timeout)
    m = Model(interval, timeout)
    now = 0.0
    pinged: dict[int, float] = {}
    for op, arg in steps:
        if op == "add":
            assert isinstance(arg, int)
            s.add(arg, now)
            m.next[arg] = now + interval
            m.deadline.pop(arg, None)
            pinged.pop(arg, None)
        elif op == "discard":
            s.discard(arg)
            m.next.pop(arg, None)  # type: ignore[call-overload]
            m.deadline.pop(arg, None)  # type: ignore[call-overload]
        elif op == "answered":
            s.answered(arg)
            m.deadline.pop(arg, None)  # type: ignore[call-overload]
        elif op == "wait":
            assert isinstance(arg, float)
            at = s.next_at()
            if at is not None and now + arg < at:
                assert s.due(now + arg) == Due()  # nothing is due before next_at()
            now += arg
        else:
            paused = set(arg)  # type: ignore[call-overload]
            out = s.due(now, paused)
            ping, drop = m.due(now, paused)
            assert set(out.ping) == ping and len(out.ping) == len(ping)
            assert set(out.drop) == drop and len(out.drop) == len(drop)
            assert not paused & set(out.ping)
            for h in out.ping:
                assert h not in pinged or now - pinged[h] >= interval
                pinged[h] = now
            for h in out.drop:
                assert timeout is not None and now - pinged[h] >= timeout
                del pinged[h]
        assert len(s) == len(m.next)
        for h in m.next:
            assert s.beat(h) is (Beat.AWAITING if h in m.deadline else Beat.IDLE)
