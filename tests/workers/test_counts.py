"""The count feed (pure): at once on follow, then changes at most once per interval."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.counts import INTERVAL, Count, CountFeed


def test_the_interval_is_the_documented_one() -> None:
    assert INTERVAL == 1.0 and CountFeed[str]().interval == INTERVAL


def test_a_follower_gets_the_count_at_once_then_changes_once_per_interval() -> None:
    feed: CountFeed[str] = CountFeed(online=5, seq=3)
    assert feed.follow("a", now=0.0) == Count(5, 3)
    assert feed.due(0.5) == [] and feed.next_due() == 1.0
    feed.changed(6, 4)
    feed.changed(7, 5)
    assert feed.due(0.9) == []
    assert feed.due(1.0) == [("a", Count(7, 5))]
    feed.changed(8, 6)
    feed.changed(7, 7)  # back to what "a" holds: nothing to send
    assert feed.due(2.5) == [] and feed.next_due() is None  # idle until a change
    feed.changed(9, 8)
    assert feed.next_due() == float("-inf")  # idle past its interval: due at once
    assert feed.due(2.6) == [("a", Count(9, 8))]
    feed.changed(10, 9)
    assert feed.due(3.5) == [] and feed.due(3.6) == [("a", Count(10, 9))]


def test_followers_sent_together_stay_together_and_forget_is_clean() -> None:
    feed: CountFeed[str] = CountFeed()
    for client in "abc":
        feed.follow(client, 0.0)
    feed.follow("d", 0.4)
    feed.changed(1, 1)
    assert sorted(c for c, _ in feed.due(1.0)) == ["a", "b", "c"]
    feed.forget("b")
    feed.changed(2, 2)
    assert [c for c, _ in feed.due(1.4)] == ["d"]
    assert sorted(c for c, _ in feed.due(2.0)) == ["a", "c"]
    for client in "acd":
        feed.forget(client)
    feed.forget("never")
    feed.changed(3, 3)
    assert feed.due(10.0) == [] and len(feed) == 0 and "a" not in feed


def test_a_new_epoch_sends_everyone_the_count_at_once() -> None:
    feed: CountFeed[str] = CountFeed(online=2, seq=9)
    feed.follow("a", 0.0)
    feed.follow("b", 0.5)
    assert sorted(feed.restart(2, 0, now=0.7)) == [("a", Count(2, 0)), ("b", Count(2, 0))]
    assert feed.due(1.6) == []  # both were just sent the count
    feed.changed(3, 1)
    assert sorted(feed.due(1.7)) == [("a", Count(3, 1)), ("b", Count(3, 1))]
    assert CountFeed[str]().restart(1, 1, 0.0) == []


class Counted:
    """A client handle that counts how often it is hashed (each set or dict step)."""

    hashes = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        Counted.hashes += 1
        return self.n


def test_ticks_and_changes_cost_nothing_for_followers_not_due() -> None:
    feed: CountFeed[Counted] = CountFeed()
    clients = [Counted(n) for n in range(5000)]
    for client in clients:
        feed.follow(client, 0.0)
    assert feed.due(1.0) == []  # the one cohort goes idle, its members untouched
    Counted.hashes = 0
    for tick in range(100):
        feed.changed(0, tick)  # a new seq, the same number
        assert feed.due(2.0 + tick) == []
    late = Counted(-1)
    feed.follow(late, 200.0)
    feed.changed(1, 200)
    assert len(feed.due(200.5)) == 5000  # the idle ones, at once; "late" waits
    assert Counted.hashes < 3 * 5000
    Counted.hashes = 0
    feed.changed(2, 201)
    assert feed.due(200.9) == []  # all sent a count within the interval
    assert Counted.hashes == 0


# ------------------------------------------------------------------ property

_event = st.one_of(
    st.tuples(st.just("change"), st.integers(0, 3), st.floats(0, 0.7)),
    st.tuples(st.just("tick"), st.just(0), st.floats(0, 0.7)),
    st.tuples(st.just("follow"), st.integers(0, 3), st.floats(0, 0.7)),
    st.tuples(st.just("forget"), st.integers(0, 3), st.floats(0, 0.7)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=40))
def test_never_two_counts_within_the_interval_and_the_last_always_arrives(
    events: list[tuple[str, int, float]],
) -> None:
    feed: CountFeed[int] = CountFeed()
    received: dict[int, list[tuple[float, int]]] = {}  # per follower: (when, online)
    online, seq, now = 0, 0, 0.0
    for kind, value, delay in events:
        now += delay
        if kind == "change":
            online, seq = value, seq + 1
            feed.changed(online, seq)
        elif kind == "follow" and value not in feed:
            assert feed.follow(value, now) == Count(online, seq)  # at once
            received[value] = [(now, online)]
        elif kind == "forget":
            feed.forget(value)
            received.pop(value, None)
        if kind == "tick" or kind == "change":
            due = feed.next_due()
            sent = feed.due(now)
            assert not sent or (due is not None and due <= now)
            assert len({client for client, _ in sent}) == len(sent)
            for client, count in sent:
                assert count == Count(online, seq)
                when, held = received[client][-1]
                assert now - when >= feed.interval and count.online != held
                received[client].append((now, count.online))
    now += feed.interval
    for client, count in feed.due(now):
        received[client].append((now, count.online))
    assert set(received) == set(feed)
    for client, got in received.items():
        assert got[-1][1] == online, (client, got)
    assert feed.due(now + 100) == []
