"""A worker answers the coordinator's ``Reannounce`` requests with one ``Hello`` per
request generation: requests that queued up while either side stalled (the coordinator
asks again while the worker's ``Hello`` is still on its way) are the same request, and
each extra ``Hello`` of a big worker would cost the coordinator a whole registration."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import backbone as bb
from tests.workers.test_core import E1, SKS, TIMING, A, Worker


def test_reannounces_queued_during_a_stall_are_answered_by_one_hello() -> None:
    w = Worker()
    w.live((A,))
    w.shell.up.clear()
    w.batch(*[bb.Reannounce()] * 6)  # read in one go after a stall
    assert len(w.up(bb.Hello)) == 1
    w.batch(bb.Reannounce())  # still before the Welcome: the same request
    assert len(w.up(bb.Hello)) == 1
    w.batch(bb.Welcome(E1))
    w.batch(bb.Reannounce())  # after the Welcome: a new request (a reply was lost)
    assert len(w.up(bb.Hello)) == 2


def test_a_hello_lost_on_its_way_is_announced_again_by_the_retry() -> None:
    w = Worker()
    w.live((A,))
    w.shell.up.clear()
    w.batch(bb.Reannounce())
    w.batch(bb.Reannounce())  # ignored: the Hello is in flight
    assert len(w.up(bb.Hello)) == 1
    w.tick(TIMING.coordinator_timeout + 0.1)  # no Welcome came: it was lost
    assert len(w.up(bb.Hello)) == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["reannounce", "welcome", "snapshot", "tick"]), max_size=40))
def test_each_request_generation_is_answered_once(steps: list[str]) -> None:
    """Whatever the order of requests, welcomes, snapshots and ticks, a worker sends a
    ``Hello`` only for a request made since its last ``Welcome`` (a generation), at most
    one per generation, plus one per ``coordinator_timeout`` with no ``Welcome`` (the
    retry: that ``Hello`` may have been lost)."""
    w = Worker()
    w.live((A,))
    w.shell.up.clear()
    allowed, asked_since = 0, None  # asked_since: the first request of the generation
    for step in steps:
        if step == "reannounce":
            if asked_since is None:
                allowed, asked_since = allowed + 1, w.now
            w.batch(bb.Reannounce())
        elif step == "welcome":
            asked_since = None
            w.batch(bb.Welcome(E1))
        elif step == "snapshot":
            w.batch(bb.Snapshot(E1, 5, 5, [A]))
        else:
            w.tick(0.5)
            w.batch(bb.Beat(E1, 5, w.wall))  # the coordinator is not silent
            if asked_since is not None and w.now - asked_since > TIMING.coordinator_timeout:
                allowed, asked_since = allowed + 1, w.now  # the retry
        assert len(w.up(bb.Hello)) <= allowed


def test_a_stall_of_the_worker_is_not_the_silence_of_its_coordinator() -> None:
    """The worker's loop stalled past the coordinator timeout (the coordinator's beats
    wait unread): its first tick after is no reason to re-announce or refuse clients.
    A coordinator silent on the worker's time awake is still noticed."""
    w = Worker()
    w.live((A,))
    client = w.online(SKS[0])
    w.tick()
    w.shell.up.clear()
    w.tick(2 * TIMING.coordinator_timeout)  # the next tick, long after
    assert not w.up(bb.Hello) and w.core.health(w.now)[0] is True
    w.batch(bb.Beat(E1, w.core.replica.seq, w.wall))  # what waited is read
    w.awake(TIMING.coordinator_timeout - 0.2)
    assert not w.up(bb.Hello)
    w.awake(0.4)
    assert w.up(bb.Hello) and w.core.health(w.now)[0] is False
    assert w.seen(client).closed is None
