"""The event stream's decisions (workers.feed): the ring, resume points, resets, and
slow consumers, with no process."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from shared import events, records
from shared.events import Event
from workers.feed import CutOff, Feed, Reset

A, B = "a" * 64, "b" * 64
BUDGET = 1 << 20


def event(seq: int, epoch: str = "e1", key: str = A) -> Event:
    return Event(epoch, seq, 1000.0 + seq, ((key, records.DEFAULT),), (), ())


def parse(frames: list[bytes]) -> list[tuple[str, object]]:
    """``(kind, what)`` per SSE frame: ``("event", seq)``, ``("reset", (epoch, seq,
    reason))``, ``("cut_off", reason)``."""
    out: list[tuple[str, object]] = []
    for frame in frames:
        assert frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1
        lines = dict(line.split(": ", 1) for line in frame.decode().strip().split("\n"))
        data = json.loads(lines["data"])
        if "event" not in lines:
            decoded = events.decode(lines["data"].encode())
            assert lines["id"] == decoded.id
            out.append(("event", decoded.seq))
        elif lines["event"] == "reset":
            assert "id" not in lines  # a consumer that reconnects unrepaired is told again
            out.append(("reset", (data["epoch"], data["seq"], data["reason"])))
        else:
            out.append((lines["event"], data["reason"]))
    return out


def fed(upto: int, **bounds: float) -> Feed:
    feed = Feed(**bounds)  # type: ignore[arg-type]
    feed.resynced("e1", 0)
    for seq in range(1, upto + 1):
        feed.published(event(seq), now=float(seq))
    return feed


def test_a_consumer_without_an_id_is_told_where_the_stream_starts() -> None:
    feed = fed(3)
    consumer = feed.open(None, now=3.0)
    assert consumer is not None
    assert parse(consumer.take(BUDGET)) == [("reset", ("e1", 3, Reset.START))]
    feed.published(event(4), now=4.0)
    assert parse(consumer.take(BUDGET)) == [("event", 4)]


def test_a_consumer_resumes_after_its_last_event_with_every_later_one_once() -> None:
    feed = fed(5)
    consumer = feed.open(("e1", 2), now=5.0)
    assert consumer is not None
    assert parse(consumer.take(BUDGET)) == [("event", 3), ("event", 4), ("event", 5)]
    feed.published(event(6), now=6.0)
    feed.published(event(6), now=6.0)  # a duplicate never reaches the ring in order
    assert parse(consumer.take(BUDGET)) == [("event", 6)]
    current = feed.open(("e1", 6), now=6.0)
    assert current is not None and current.take(BUDGET) == []


def test_an_id_the_ring_no_longer_covers_gets_a_reset_too_old() -> None:
    feed = fed(10, ring_bytes=3 * 400)
    assert feed.base > 2
    consumer = feed.open(("e1", 2), now=10.0)
    assert consumer is not None
    assert parse(consumer.take(BUDGET)) == [("reset", ("e1", 10, Reset.TOO_OLD))]
    covered = feed.open(("e1", feed.base), now=10.0)
    assert covered is not None and parse(covered.take(BUDGET))[0] == ("event", feed.base + 1)


def test_events_older_than_the_ring_age_are_dropped() -> None:
    feed = fed(5, ring_age=2.5)
    assert feed.base == 2  # 1 and 2 are older than 2.5 s at 5.0
    feed.trim(100.0)
    assert (feed.base, feed.newest, feed.held_bytes) == (5, 5, 0)


def test_another_epoch_gets_a_reset_epoch() -> None:
    feed = fed(3)
    consumer = feed.open(("e0", 3), now=3.0)
    assert consumer is not None
    assert parse(consumer.take(BUDGET)) == [("reset", ("e1", 3, Reset.EPOCH))]


def test_an_id_ahead_of_the_worker_waits_for_what_follows_it() -> None:
    feed = fed(3)
    consumer = feed.open(("e1", 5), now=3.0)
    assert consumer is not None and consumer.take(BUDGET) == []
    for seq in (4, 5, 6):
        feed.published(event(seq), now=float(seq))
    assert parse(consumer.take(BUDGET)) == [("event", 6)]


def test_a_resync_elsewhere_resets_every_consumer_and_one_in_place_none() -> None:
    feed = fed(3)
    consumer = feed.open(("e1", 3), now=3.0)
    assert consumer is not None
    assert feed.resynced("e1", 3) == []  # where the ring stands: continuity kept
    feed.resynced("e1", 7)  # the worker lost 4..7 and healed from a snapshot
    assert parse(consumer.take(BUDGET)) == [("reset", ("e1", 7, Reset.GAP))]
    feed.published(event(8), now=8.0)
    assert parse(consumer.take(BUDGET)) == [("event", 8)]
    feed.published(event(9), now=8.5)  # not taken before the reset: superseded by it
    feed.resynced("e2", 0)  # the coordinator restarted
    feed.published(event(1, "e2"), now=9.0)
    assert parse(consumer.take(BUDGET)) == [("reset", ("e2", 0, Reset.EPOCH)), ("event", 1)]
    assert feed.resets == {Reset.GAP: 1, Reset.EPOCH: 1}


def test_a_slow_consumer_is_cut_off_when_the_ring_leaves_it_behind_and_others_are_not() -> None:
    feed = fed(0, ring_bytes=2000)
    slow, quick = feed.open(None, now=0.0), feed.open(None, now=0.0)
    assert slow is not None and quick is not None
    slow.take(BUDGET)
    seen = []
    for seq in range(1, 40):
        feed.published(event(seq), now=1.0)
        seen += parse(quick.take(BUDGET))
    assert slow.cut_off == CutOff.SLOW_CONSUMER and quick.cut_off is None
    assert parse(slow.take(BUDGET)) == [("cut_off", CutOff.SLOW_CONSUMER)]
    assert slow.take(BUDGET) == []
    assert seen == [("reset", ("e1", 0, Reset.START))] + [("event", n) for n in range(1, 40)]
    feed.close(slow)
    assert feed.cut_offs == {CutOff.SLOW_CONSUMER: 1}


def test_a_consumer_is_handed_about_its_budget_at_a_time() -> None:
    feed = fed(10)
    consumer = feed.open(("e1", 0), now=10.0)
    assert consumer is not None and consumer.due
    one = consumer.take(1)
    assert parse(one) == [("event", 1)]  # at least one, whatever the budget
    size = len(one[0])
    assert parse(consumer.take(3 * size)) == [("event", n) for n in (2, 3, 4)]
    assert len(consumer.take(BUDGET)) == 6 and not consumer.due


def test_the_ring_holds_at_most_ring_events_and_a_consumer_behind_it_is_cut_off() -> None:
    feed = fed(0, ring_events=5)
    consumer = feed.open(("e1", 0), now=0.0)
    assert consumer is not None
    for seq in range(1, 7):
        feed.published(event(seq), now=1.0)
    assert feed.base == 1 and consumer.cut_off == CutOff.SLOW_CONSUMER


def test_a_consumer_left_behind_by_age_is_cut_off_at_the_next_trim() -> None:
    feed = fed(0, ring_age=10.0)
    consumer = feed.open(("e1", 0), now=0.0)
    assert consumer is not None
    feed.published(event(1), now=1.0)
    assert feed.trim(5.0) == [] and consumer.cut_off is None
    assert feed.trim(20.0) == [consumer] and consumer.cut_off == CutOff.SLOW_CONSUMER


def test_at_most_max_consumers_and_a_closed_one_frees_its_place() -> None:
    feed = fed(1, max_consumers=2)
    first, second = feed.open(None, now=1.0), feed.open(None, now=1.0)
    assert first is not None and second is not None
    assert feed.open(None, now=1.0) is None
    feed.close(first)
    assert feed.open(None, now=1.0) is not None


def test_stopping_cuts_every_consumer_off_going_away() -> None:
    feed = fed(1)
    consumer = feed.open(None, now=1.0)
    assert consumer is not None
    feed.stop_all(CutOff.GOING_AWAY)
    assert parse(consumer.take(BUDGET)) == [("cut_off", CutOff.GOING_AWAY)]
    feed.published(event(2), now=2.0)
    assert consumer.take(BUDGET) == []


@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=40),
    st.integers(0, 30),
    st.integers(0, 3000),
)
def test_whatever_the_history_a_prompt_consumer_sees_each_event_once_in_order_or_a_reset(
    steps: list[int], resume_at: int, ring_bytes: int
) -> None:
    """Events, resyncs elsewhere, new epochs, a ring of any size: what a consumer that
    takes what it is due after each step is sent, applied from its resume point (and
    from the lobby at each reset), is consecutive, and it is never cut off."""
    feed = Feed(ring_bytes=ring_bytes)
    feed.resynced("e0", 0)
    epoch, seq, consumer, start = "e0", 0, None, 0
    sent: list[bytes] = []
    for step in steps:
        if step == 0 and consumer is None:
            start = min(resume_at, seq)
            consumer = feed.open(("e0", start), now=0.0)
        elif step == 1:
            seq += 1
            feed.published(event(seq, epoch), now=0.0)
        elif step == 2:
            seq += 2
            feed.resynced(epoch, seq)
        else:
            epoch, seq = f"e{int(epoch[1:]) + 1}", 0
            feed.resynced(epoch, seq)
        if consumer is not None:
            sent += consumer.take(BUDGET)
    if consumer is None:
        return
    assert consumer.cut_off is None
    position = start
    for kind, what in parse(sent):
        if kind == "reset":
            assert isinstance(what, tuple)
            position = what[1]
        else:
            assert what == position + 1, (position, what)
            position = int(str(what))
    assert position == seq
